"""The versioned JSON Schema of ``report.json`` (``report.schema.json`` beside this module) and its validation.

``SCHEMA_VERSION`` is ``MAJOR.MINOR``: a new optional field bumps MINOR, a renamed or removed field bumps MAJOR.
``edgediff compare`` reads reports of the same MAJOR version only.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from edgediff.errors import EdgediffError

SCHEMA_VERSION = "1.1"
"""1.1: the optional ``incomplete`` block (a bench cut short by a signal)."""
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


class ReportSchemaError(EdgediffError):
    """A report does not match the schema (or is of another major version); the message names the field."""


@functools.cache
def load_schema() -> dict[str, Any]:
    """The report's JSON Schema as a dict."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def major(version: str) -> int:
    """The major number of a ``MAJOR.MINOR`` version string."""
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError as exc:
        raise ReportSchemaError(f"schema_version {version!r} is not MAJOR.MINOR") from exc


def validate_report(report: dict[str, Any], *, source: str = "report") -> None:
    """Check ``report`` against the schema.

    Uses ``jsonschema`` when it is installed (the dev extra); without it only the version and the top-level keys
    are checked.

    Raises:
        ReportSchemaError: The first problem, with its JSON path.
    """
    version = report.get("schema_version")
    if version is None:
        raise ReportSchemaError(f"{source}: no schema_version: not an edgediff bench report")
    if major(version) != major(SCHEMA_VERSION):
        raise ReportSchemaError(f"{source}: schema_version {version} is not readable by this edgediff "
                                f"(reads {major(SCHEMA_VERSION)}.x)")
    schema = load_schema()
    try:
        import jsonschema
    except ImportError:
        missing = [k for k in schema["required"] if k not in report]
        if missing:
            raise ReportSchemaError(f"{source}: missing {', '.join(missing)}") from None
        return
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(report))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise ReportSchemaError(f"{source}: {path}: {error.message}")
