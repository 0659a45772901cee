import json

import pytest

from edgediff.bench.select import fastest_passing, gate_passed, main
from edgediff.errors import EdgediffError


def entry(name, total_s, passed=None, status="ok"):
    e = {"name": name, "status": status, "latency": {"total": {"p50_s": total_s}}}
    if passed is not None:
        e["quality"] = {"gate": {"passed": passed}}
    return e


SPEED = {"variants": [entry("torch-fp32", 30.0), entry("int8", 5.0), entry("bf16-dc3", 7.0), entry("bf16", 12.0),
                      entry("broken", 1.0, status="failed")]}
QUALITY = {"variants": [entry("torch-fp32", 1.0, True), entry("int8", 1.0, False), entry("bf16-dc3", 1.0, True),
                        entry("bf16", 1.0, True), entry("broken", 1.0, True)]}


def test_fastest_variant_that_passed_the_gate():
    assert gate_passed(QUALITY) == {"torch-fp32", "bf16-dc3", "bf16", "broken"}
    assert fastest_passing(SPEED, QUALITY) == "bf16-dc3"  # int8 is faster but FAILED; broken did not run
    assert fastest_passing(SPEED, QUALITY, allowed=["bf16", "torch-fp32"]) == "bf16"


def test_no_evidence_no_choice():
    ungated = {"variants": [entry("bf16", 1.0)]}
    with pytest.raises(EdgediffError, match="no variant"):
        fastest_passing(SPEED, ungated)


def test_cli(tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps(SPEED))
    (tmp_path / "q.json").write_text(json.dumps(QUALITY))
    assert main(["--speed", str(tmp_path / "s.json"), "--quality", str(tmp_path / "q.json")]) == 0
    assert capsys.readouterr().out.strip() == "bf16-dc3"
    assert main(["--speed", str(tmp_path / "s.json"), "--quality", str(tmp_path / "missing.json")]) == 2
