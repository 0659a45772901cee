"""OpenVINO's tools report no usage through edgediff unless the user opted in (``edgediff.usage_reporting``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino_telemetry")
pytest.importorskip("nncf")

# NNCF replaces its reporting with a stub under pytest, so the real path is run in a plain child process, with a
# home of its own (where the consent and client-ID files live) and no CI variables (which would decline anyway)
PROBE = """
import json, os, sys
if sys.argv[1] == "edgediff":
    from edgediff.availability import require
    require("nncf")
else:
    import nncf
from openvino_telemetry import Telemetry
from openvino_telemetry.utils.opt_in_checker import OptInChecker
print(json.dumps({"consent": Telemetry().consent, "check": OptInChecker().check(False, True).name,
                  "home": sorted(os.listdir(os.path.expanduser("~")))}))
"""


def _probe(home: Path, how: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_a_consent_file_nncf_imported_through_edgediff_reports_nothing_and_writes_nothing(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _probe(plain, "plain")["consent"] is True  # what NNCF alone does: no consent file counts as yes
    ours = tmp_path / "ours"
    ours.mkdir()
    seen = _probe(ours, "edgediff")
    assert seen["consent"] is False and seen["check"] == "DECLINED"
    assert seen["home"] == [] and not (ours / "intel").exists()  # no client ID, no consent file written


@pytest.mark.parametrize(("choice", "expected"), [("1", "ACCEPTED"), ("0", "DECLINED")])
def test_a_choice_made_with_opt_in_out_is_kept(tmp_path, choice, expected):
    (tmp_path / "intel").mkdir()
    (tmp_path / "intel" / "openvino_telemetry").write_text(choice)
    assert _probe(tmp_path, "edgediff")["check"] == expected
