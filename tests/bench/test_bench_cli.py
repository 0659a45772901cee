"""``edgediff bench`` end to end on the tiny preset (isolated workers, a fixture power reader)."""

import csv
import json

import jsonschema
import pytest
from PIL import Image

from cli.main import main
from edgediff.bench.schema import SCHEMA_PATH, SCHEMA_VERSION
from edgediff.variants import get_variant
from tests.bench.conftest import CLI_RUNS, CLI_VARIANTS, FIXTURE_POWER_W, CliBench

pytestmark = pytest.mark.slow


def _report(bench: CliBench) -> dict:
    return json.loads((bench.out / "report.json").read_text())


def test_report_validates_against_its_schema(cli_bench: CliBench) -> None:
    report = _report(cli_bench)
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator(schema).validate(report)
    assert report["schema_version"] == SCHEMA_VERSION and report["model"]["name"] == "tiny"
    env = report["environment"]
    assert env["cpu"]["model"] and env["cpu"]["logical_cores"] >= 1 and env["libraries"]["torch"]
    assert report["weights"]["synthetic"] is True and report["config"]["isolate"] is True


def test_every_file_exists_and_pngs_open(cli_bench: CliBench) -> None:
    report = _report(cli_bench)
    for name in ("report.json", "report.csv", "report.md", "latency.png", "energy.png", "breakdown.png"):
        assert (cli_bench.out / name).is_file(), name
    measured = [e for e in report["variants"] if e["status"] == "ok"]
    assert {e["name"] for e in measured} >= {"torch-fp32", "onnx-fp32"}
    pngs = [cli_bench.out / n for n in ("latency.png", "energy.png", "breakdown.png")]
    pngs += [cli_bench.out / e["sample_image"] for e in measured]
    for path in pngs:
        with Image.open(path) as img:
            img.verify()
            assert img.format == "PNG"
    with Image.open(cli_bench.out / "samples" / "onnx-fp32.png") as img:
        assert img.size == (64, 64) and img.text["edgediff:variant"] == "onnx-fp32"
    assert not list(cli_bench.out.rglob("*.tmp"))


def test_percentiles_are_consistent(cli_bench: CliBench) -> None:
    for entry in _report(cli_bench)["variants"]:
        if entry["status"] != "ok":
            continue
        for stage in ("denoise", "decode", "total"):
            s = entry["latency"][stage]
            assert s["n"] == CLI_RUNS
            assert s["min_s"] <= s["p50_s"] <= s["p90_s"] <= s["max_s"]
            assert s["min_s"] <= s["mean_s"] <= s["max_s"]
        assert len(entry["latency"]["warmup_total_s"]) == 1
        assert entry["stability"]["stable"] is None  # 2 runs: too few to judge, and the report says so


def test_unavailable_variants_are_listed_with_the_reason(cli_bench: CliBench) -> None:
    report = _report(cli_bench)
    names = [e["name"] for e in report["variants"]]
    assert names == list(CLI_VARIANTS)
    fp16 = report["variants"][2]
    avail = get_variant("torch-fp16").availability()
    if avail.ok:
        pytest.skip("torch-fp16 runs on this machine (CUDA)")
    assert fp16["status"] == "unavailable" and fp16["reason"] == avail.reason
    assert f"- torch-fp16: unavailable: {avail.reason}" in (cli_bench.out / "report.md").read_text()
    assert "torch-fp16: unavailable" in cli_bench.stdout


def test_isolated_peak_memory_is_per_variant(cli_bench: CliBench) -> None:
    for entry in _report(cli_bench)["variants"]:
        if entry["status"] != "ok":
            continue
        mem = entry["memory"]
        assert entry["isolated"] is True and "fresh subprocess" in mem["method"]
        assert mem["peak_kind"] == "process-peak-rss" and mem["peak_bytes"] > 50_000_000
        assert mem["setup_peak_rss_bytes"] > 50_000_000


def test_fixture_energy_is_labelled_everywhere(cli_bench: CliBench) -> None:
    report = _report(cli_bench)
    base = report["variants"][0]
    head = base["energy"]["headline"]
    assert head["label"] == "fixture" and head["sources"] == ["fixture"]
    assert head["power_w"] == pytest.approx(FIXTURE_POWER_W)
    # the idle baseline saw the same constant power, so net energy is ~0
    assert report["telemetry"]["idle_power_w"]["fixture"] == pytest.approx(FIXTURE_POWER_W)
    assert abs(head["net_energy_per_image_j"]) < 1e-6 * head["energy_per_image_j"] + 1e-9
    md = (cli_bench.out / "report.md").read_text()
    assert f"{FIXTURE_POWER_W:.3g} (fixture)" in md
    with open(cli_bench.out / "report.csv", newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert rows["onnx-fp32"]["energy_label"] == "fixture" and rows["torch-fp16"]["status"] == "unavailable"
    assert any("FIXTURE" in w for w in report["warnings"])


def test_fidelity_of_the_baseline_against_itself(cli_bench: CliBench) -> None:
    report = _report(cli_bench)
    base, onnx = report["variants"][0], report["variants"][1]
    assert base["fidelity"]["psnr_db"] == "inf" and base["fidelity"]["ssim"] == 1.0
    assert base["fidelity"]["max_abs_latent_error"] == 0.0 and base["speedup_vs_baseline"] == 1.0
    assert onnx["fidelity"]["images"] == CLI_RUNS and onnx["fidelity"]["ssim"] > 0.99
    assert onnx["fidelity"]["max_abs_latent_error"] < 1e-3


def test_stdout_has_the_table_and_where_the_report_lives(cli_bench: CliBench) -> None:
    header = "| Variant | Sampler | Denoise p50 (s) | Decode p50 (s) | Total p50 (s) | p90 | Speedup |"
    assert header in cli_bench.stdout
    assert "| torch-fp32 (baseline) |" in cli_bench.stdout
    assert f"report: {cli_bench.out / 'report.md'}" in cli_bench.stdout
    assert "WARNING: weights: synthetic" in cli_bench.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["--runs", "0"], "--runs must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--steps", "0"], "steps must be an integer in 1..1000"),
    (["--variants", "nope"], "unknown variant 'nope'"),
    (["--through", "gateway"], "--through must be 'local' or 'gateway HOST:PORT'"),
    (["--model", "nope"], "unknown model preset 'nope'"),
    (["--idle-s", "-1"], "--idle-s must be >= 0"),
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], message: str, tmp_path, capsys) -> None:
    assert main(["bench", "--model", "tiny", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "report.json").exists()
