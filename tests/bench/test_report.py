import math

import pytest

from edgediff.bench.report import energy_section, memory_section
from edgediff.bench.report_writers import render_csv, render_markdown
from edgediff.bench.schema import ReportSchemaError, validate_report
from tests.bench.reports import fake_run, make_report, window

NO_SENSOR = {"power_readers": [], "unavailable": ["nvml: NVML library not found", "rapl: no zone"]}


def test_energy_unavailable_says_why_and_has_no_number() -> None:
    energy = energy_section(window(2.0, {}), images=4, telemetry=NO_SENSOR)
    assert energy["available"] is False and energy["headline"] is None
    assert energy["reason"].startswith("unavailable: ") and "nvml: NVML library not found" in energy["reason"]
    assert "no power sensor" in energy["reason"]
    assert energy_section(None, 4, NO_SENSOR)["reason"].startswith("unavailable: ")


def test_energy_per_image_by_domain_gross_and_net() -> None:
    win = window(2.0, {
        "soc-total": {"gross_j": 20.0, "net_j": 12.0, "idle_power_w": 4.0, "source": "tegrastats",
                      "method": "trapezoid"},
        "gpu": {"gross_j": 8.0, "net_j": 6.0, "idle_power_w": 1.0, "source": "tegrastats", "method": "trapezoid",
                "part_of": "soc-total"},
        "cpu-package": {"valid": False, "reason": "reader down", "source": "rapl"},
    })
    energy = energy_section(win, images=4, telemetry={"power_readers": ["tegrastats"], "unavailable": []})
    head = energy["headline"]
    # parts are never added to their whole; an invalid whole is left out and said so
    assert head["domains"] == ["soc-total"] and head["energy_per_image_j"] == 5.0
    assert head["net_energy_per_image_j"] == 3.0 and head["power_w"] == 10.0 and head["net_power_w"] == 6.0
    assert head["label"] == "measured" and "cpu-package: reader down" in energy["reason"]
    gpu = next(d for d in energy["domains"] if d["domain"] == "gpu")
    assert gpu["energy_per_image_j"] == 2.0 and gpu["part_of"] == "soc-total"


def test_estimated_energy_is_labelled_everywhere() -> None:
    base = fake_run("torch-fp32", [1.0, 1.0], power_w=30.0, domain="cpu-package", source="estimated",
                    estimated=True)
    other = fake_run("onnx-fp32", [0.5, 0.5], power_w=30.0, domain="cpu-package", source="estimated",
                     estimated=True)
    report = make_report("cpu", [base, other])
    validate_report(report)
    head = report["variants"][1]["energy"]["headline"]
    assert head["label"] == "estimated" and head["estimated"] is True
    md = render_markdown(report)
    assert "30 (estimated)" in md and "15 (estimated)" in md
    rows = render_csv(report).splitlines()
    assert all(",estimated," in row for row in rows[1:])
    assert any("ESTIMATED" in w for w in report["warnings"])


def test_ratios_against_the_baseline() -> None:
    report = make_report("gpu", [fake_run("torch-fp32", [2.0, 2.0, 2.0], power_w=100.0),
                                 fake_run("onnx-fp32", [0.5, 0.5, 0.5], power_w=80.0, pixel=10)])
    base, onnx = report["variants"]
    assert base["speedup_vs_baseline"] == 1.0 and onnx["speedup_vs_baseline"] == 4.0
    assert onnx["energy_ratio_vs_baseline"] == pytest.approx(40.0 / 200.0)
    assert base["fidelity"]["psnr_db"] == "inf" and base["fidelity"]["ssim"] == 1.0
    assert math.isfinite(onnx["fidelity"]["psnr_db"]) and onnx["fidelity"]["max_abs_latent_error"] > 0


def test_energy_ratio_refused_across_domains() -> None:
    report = make_report("x", [fake_run("torch-fp32", [1.0], power_w=10.0, domain="gpu-board"),
                               fake_run("onnx-fp32", [1.0], power_w=10.0, domain="cpu-package", source="rapl")])
    onnx = report["variants"][1]
    assert onnx["energy_ratio_vs_baseline"] is None
    assert any("different power domains" in n for n in onnx["ratio_notes"])


def test_memory_headline_prefers_device_wide_on_jetson_then_cuda() -> None:
    jetson = memory_section({"process_peak_rss_bytes": 1, "cuda_max_allocated_bytes": 2,
                             "window_peak_bytes": {"tegrastats-ram-used": 3}})
    assert (jetson["peak_bytes"], jetson["peak_kind"]) == (3, "tegrastats-ram-used")
    assert "device-wide" in jetson["peak_label"]
    gpu = memory_section({"process_peak_rss_bytes": 1, "cuda_max_allocated_bytes": 2, "window_peak_bytes": {}})
    assert (gpu["peak_bytes"], gpu["peak_kind"]) == (2, "cuda-max-allocated")
    cpu = memory_section({"process_peak_rss_bytes": 1, "cuda_max_allocated_bytes": None, "window_peak_bytes": {}})
    assert (cpu["peak_bytes"], cpu["peak_kind"]) == (1, "process-peak-rss")


def test_schema_rejects_a_broken_report() -> None:
    report = make_report("x", [fake_run("torch-fp32", [1.0])])
    report["variants"][0]["latency"]["total"]["p50_s"] = -1.0
    with pytest.raises(ReportSchemaError, match="variants/0/latency/total/p50_s"):
        validate_report(report)
    with pytest.raises(ReportSchemaError, match="not readable"):
        validate_report({**report, "schema_version": "2.0"})
