import json
from pathlib import Path

import pytest
from PIL import Image

from cli.main import main
from edgediff.bench.compare import ReportMismatchError, compare_reports, load_report, render_markdown
from edgediff.errors import InvalidArgumentError
from tests.bench.reports import fake_run, make_report


def _write(tmp_path: Path, name: str, report: dict) -> Path:
    path = tmp_path / name / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    return path


def _device(label: str, total_s: float, power_w: float | None, domain: str = "gpu-board", **kwargs) -> dict:
    return make_report(label, [fake_run("torch-fp32", [total_s] * 3, power_w=power_w, domain=domain,
                                        peak_bytes=700_000_000)], **kwargs)


def test_relative_columns_are_exact(tmp_path: Path) -> None:
    rtx = _write(tmp_path, "rtx", _device("RTX 3090", 0.8, 300.0))
    jetson = _write(tmp_path, "jetson", _device("Jetson Orin", 6.4, 15.0))
    comparison = compare_reports([(str(p), load_report(p)) for p in (rtx, jetson)], variant="baseline")
    ref, other = comparison["rows"]
    assert comparison["reference"] == "RTX 3090"
    assert (ref["latency_vs_reference"], ref["energy_vs_reference"]) == (1.0, 1.0)
    assert other["latency_vs_reference"] == 6.4 / 0.8
    assert other["energy_vs_reference"] == other["energy_per_image_j"] / ref["energy_per_image_j"]
    assert other["energy_per_image_j"] == pytest.approx(15.0 * 6.4)
    assert not comparison["domains_differ"]
    by_jetson = compare_reports([(str(p), load_report(p)) for p in (rtx, jetson)], reference="Jetson Orin")
    assert by_jetson["rows"][0]["latency_vs_reference"] == 0.8 / 6.4


def test_mismatched_presets_or_steps_are_refused_unless_forced(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path, "a", _device("A", 1.0, None, model="tiny"))
    b = _write(tmp_path, "b", _device("B", 2.0, None, model="celebahq-256"))
    c = _write(tmp_path, "c", _device("C", 2.0, None, steps=10))
    with pytest.raises(ReportMismatchError, match="different model presets"):
        compare_reports([(str(p), load_report(p)) for p in (a, b)])
    with pytest.raises(ReportMismatchError, match="different step counts"):
        compare_reports([(str(p), load_report(p)) for p in (a, c)])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different model presets" in err and "--force" in err
    forced = compare_reports([(str(p), load_report(p)) for p in (a, b)], force=True)
    assert any(n.startswith("FORCED: different model presets") for n in forced["notes"])


def test_different_power_domains_are_said(tmp_path: Path) -> None:
    gpu = _write(tmp_path, "gpu", _device("RTX", 1.0, 200.0, domain="gpu-board"))
    jet = _write(tmp_path, "jet", _device("Orin", 4.0, 12.0, domain="soc-total"))
    phone = _write(tmp_path, "phone", _device("Pixel", 30.0, 3.0, domain="battery"))
    comparison = compare_reports([(str(p), load_report(p)) for p in (gpu, jet, phone)])
    assert comparison["domains_differ"]
    note = next(n for n in comparison["notes"] if "power domains differ" in n)
    assert "GPU board only" in note and "whole module input rail" in note and "battery" in note
    assert "†" in render_markdown(comparison)


def test_compare_cli_writes_markdown_png_json(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path, "a", _device("A", 1.0, 50.0))
    b = _write(tmp_path, "b", _device("B", 3.0, None))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--reference", "B", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| A | torch-fp32 |" in printed and "Reference device: **B**" in printed
    data = json.loads((out / "compare.json").read_text())
    assert data["rows"][0]["latency_vs_reference"] == 1.0 / 3.0 and data["rows"][0]["energy_vs_reference"] is None
    assert (out / "compare.md").read_text().startswith("# edgediff compare")
    with Image.open(out / "compare.png") as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_bad_inputs(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _device("A", 1.0, None))
    with pytest.raises(InvalidArgumentError, match="at least two"):
        compare_reports([(str(a), load_report(a))])
    with pytest.raises(InvalidArgumentError, match="--reference: no device called 'Z'"):
        compare_reports([(str(a), load_report(a))] * 2, reference="Z")
    with pytest.raises(InvalidArgumentError, match="no measured 'onnx-fp32'"):
        compare_reports([(str(a), load_report(a))] * 2, variant="onnx-fp32")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        load_report(bad)


def test_an_incomplete_report_is_refused_unless_asked(tmp_path: Path, capsys) -> None:
    cut_short = _device("Jetson Orin", 6.4, 15.0)
    cut_short["incomplete"] = {"reason": "interrupted by SIGTERM while measuring onnx-fp32", "signal": "SIGTERM",
                               "exit_code": 143, "not_measured": ["onnx-fp32"]}
    paths = [str(_write(tmp_path, "rtx", _device("RTX 3090", 0.8, 300.0))), str(_write(tmp_path, "jetson", cut_short))]
    out = tmp_path / "cmp"
    assert main(["compare", *paths, "--out", str(out)]) == 2
    assert "is incomplete (interrupted by SIGTERM while measuring onnx-fp32; not measured: onnx-fp32)" in \
        capsys.readouterr().err
    assert not out.exists()
    assert main(["compare", *paths, "--allow-incomplete", "--out", str(out)]) == 0
    notes = json.loads((out / "compare.json").read_text())["notes"]
    assert any("INCOMPLETE" in note and "jetson" in note for note in notes), notes
