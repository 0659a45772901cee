"""Build every artifact a variant needs, in a process of its own (``prepare_worker`` is that process).

Exports need the fp32 PyTorch modules (about 1.3 GB for celebahq-256) and the int8 calibration several GB more; a
process that runs from artifacts (the OpenVINO and low-memory variants) must never hold them. Such a process runs
this module as a child: the child loads the model, exports and calibrates what is missing into
the artifact cache, prints a JSON summary on stdout and exits, returning its memory; the parent then loads only the
artifacts. Useful by hand too, to prepare a machine before timing runs::

    python -m edgediff.artifacts.prepare_worker --model celebahq-256 --variant openvino-int8 --deepcache 3
"""

from __future__ import annotations

import json
import subprocess
import sys

from edgediff.errors import EdgediffError
from edgediff.processes import run_child


def prepare_in_subprocess(
    *, model: str, weights: str | None, weights_seed: int, variant: str, deepcache: int = 1, timeout_s: float = 7200
) -> dict:
    """Run this module in a child process and return its JSON summary.

    Args:
        model: Preset name.
        weights: Weights folder, or None (``$EDGEDIFF_WEIGHTS``, bundled or synthetic, as ``load_components``).
        weights_seed: Seed of synthetic weights.
        variant: The variant whose artifacts to build.
        deepcache: DeepCache interval (its parts are built when > 1).
        timeout_s: Give up after this long.

    Raises:
        EdgediffError: the child failed; the message carries the end of its stderr.
    """
    cmd = [sys.executable, "-m", "edgediff.artifacts.prepare_worker", "--model", model,
           "--weights-seed", str(weights_seed), "--variant", variant, "--deepcache", str(deepcache)]
    if weights:
        cmd += ["--weights", str(weights)]
    try:  # an owned worker: stopped with this process, and on Linux it dies with it (edgediff.processes)
        proc = run_child(cmd, timeout_s=timeout_s, capture=True, name=f"prepare {variant}")
    except subprocess.TimeoutExpired as exc:
        raise EdgediffError(f"preparing the artifacts of {variant} took more than {timeout_s:.0f} s; stopped") from exc
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise EdgediffError(f"preparing the artifacts of {variant} failed: {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
