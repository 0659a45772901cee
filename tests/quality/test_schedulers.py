"""Samplers (``edgediff.schedulers``): argument checks, convergence on tiny, each fast variant under each sampler
against torch-fp32 under the same sampler, and the digits gate of the multistep solvers at fewer steps."""

from __future__ import annotations

import pytest

from edgediff.errors import InvalidArgumentError
from edgediff.schedulers import DDIM, DPMPP, SCHEDULERS, UNIPC, check_scheduler, row_name, split_row
from edgediff.variants import BASELINE, BuildOptions, build_variant, get_variant

SEED = 3


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_names_and_errors():
    assert check_scheduler(None) == DDIM and check_scheduler(" DPMPP ") == DPMPP
    with pytest.raises(InvalidArgumentError, match="--scheduler must be one of ddim, dpmpp, unipc"):
        check_scheduler("euler")
    with pytest.raises(InvalidArgumentError, match="eta must be 0 with scheduler unipc"):
        check_scheduler("unipc", eta=0.5, field="scheduler")
    assert check_scheduler("ddim", eta=0.5) == DDIM


def test_bench_rows():
    assert split_row("openvino-fp32-dc3@dpmpp:10") == ("openvino-fp32-dc3", DPMPP, 10)
    assert split_row("torch-fp32") == ("torch-fp32", None, None)
    assert split_row("torch-fp32@unipc") == ("torch-fp32", UNIPC, None)
    assert row_name("torch-fp32", DPMPP, 8) == "torch-fp32@dpmpp:8"
    with pytest.raises(InvalidArgumentError, match="steps after ':'"):
        split_row("torch-fp32@dpmpp:0")
    with pytest.raises(InvalidArgumentError, match="scheduler must be one of"):
        split_row("torch-fp32@heun:10")


def test_samplers_are_made_without_importing_scipy_and_leave_diffusers_flag_as_it_was():
    """diffusers' multistep scheduler modules import scipy.stats (54 MB) for beta sigmas no sampler here uses."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from diffusers.utils import import_utils\n"
        "before = import_utils.is_scipy_available()\n"
        "from edgediff.schedulers import SCHEDULERS, make_scheduler\n"
        "timesteps = {}\n"
        "for name in SCHEDULERS:\n"
        "    s = make_scheduler(name, {'num_train_timesteps': 1000}); s.set_timesteps(5)\n"
        "    timesteps[name] = s.timesteps.tolist()\n"
        "print('scipy.stats' in sys.modules, import_utils.is_scipy_available() == before, timesteps)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported, restored, timesteps = proc.stdout.strip().split(" ", 2)
    assert (imported, restored) == ("False", "True")
    assert timesteps == str({DDIM: [800, 600, 400, 200, 0], DPMPP: [999, 843, 593, 142, 0],
                             UNIPC: [999, 843, 593, 142, 0]})  # Karras sigmas, as before


def test_pipeline_records_the_sampler_and_rejects_eta(tiny_components):
    pipeline = build_variant(BASELINE, tiny_components).pipeline(tiny_components)
    result = pipeline(seed=SEED, steps=4, scheduler=DPMPP)
    assert result.metadata["scheduler"] == DPMPP and result.metadata["steps"] == "4"
    with pytest.raises(InvalidArgumentError, match="eta must be 0"):
        pipeline(seed=SEED, steps=4, eta=0.3, scheduler=DPMPP)


@pytest.mark.parametrize("scheduler", [DPMPP, UNIPC])
def test_multistep_solvers_converge(tiny_components, scheduler):
    """10 steps of a second-order solver land within 5 % of its own 50-step solution (measured on tiny: 3.6 % for
    dpmpp, 3.2 % for unipc), so the solver integrates the model's ODE rather than something else."""
    pipeline = build_variant(BASELINE, tiny_components).pipeline(tiny_components)
    fine = pipeline(seed=SEED, steps=50, scheduler=scheduler).latents
    coarse = pipeline(seed=SEED, steps=10, scheduler=scheduler).latents
    assert rel_err(coarse, fine) <= 5e-2


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("name", ["openvino-fp32-dc3", "openvino-fp32-int8dec", "openvino-fp32-int8dec-dc3"])
def test_fast_variants_under_every_sampler(tiny_components, name, scheduler):
    """Each new variant stays within its tolerance of torch-fp32 (with the same DeepCache interval and sampler)."""
    variant = get_variant(name)
    avail = variant.availability()
    if not avail.ok:
        pytest.skip(f"{name}: {avail.reason}")
    interval = getattr(variant, "interval", 1)
    reference = build_variant(BASELINE, tiny_components, BuildOptions(deepcache_interval=interval))
    built = build_variant(name, tiny_components)
    want = reference.pipeline(tiny_components)(seed=SEED, steps=8, scheduler=scheduler)
    got = built.pipeline(tiny_components)(seed=SEED, steps=8, scheduler=scheduler)
    assert rel_err(got.latents, want.latents) <= max(variant.tolerance, 1e-6)
    assert got.metadata["scheduler"] == scheduler


@pytest.mark.slow
def test_dpmpp_at_10_steps_passes_the_digits_gate_against_ddim_20(tmp_path):
    """The sampler lever, gated: torch-fp32 with DPM-Solver++ at 10 steps vs torch-fp32 DDIM-20 on digits."""
    from edgediff.bench.runner import TelemetryOptions
    from edgediff.bench.suite import BenchConfig, run_bench
    from edgediff.quality.bench_hook import make_quality_hook

    rows = ["torch-fp32@dpmpp:10", "torch-fp32@ddim:2"]
    config = BenchConfig(model="digits", variants=rows, steps=20, runs=1, warmup=0, threads=1, isolate=False,
                         telemetry=TelemetryOptions(enabled=False), out=tmp_path)
    report, _ = run_bench(config, quality_fn=make_quality_hook(config), progress=None)
    entries = {e["name"]: e for e in report["variants"]}
    assert entries["torch-fp32@dpmpp:10"]["quality"]["gate"]["status"] == "PASSED"
    assert entries["torch-fp32@dpmpp:10"]["info"]["steps"] == 10
    assert entries["torch-fp32@ddim:2"]["quality"]["gate"]["status"] == "FAILED"  # the gate does bite
    assert "reference torch-fp32 ddim 20 steps" in entries["torch-fp32@dpmpp:10"]["quality"]["source"]


@pytest.mark.slow
@pytest.mark.parametrize("bf16", ["as this CPU", "without"])
def test_int8_at_5_unipc_steps_passes_the_digits_gate_against_ddim_20(tmp_path, monkeypatch, bf16):
    """The fast default row (openvino-int8, UniPC 5 steps) is gated; ``without`` bf16 it compiles at fp32 and runs
    the IR with compressed linear weights (what an AVX2-only CPU runs), whatever this CPU has."""
    from edgediff.availability import cpu_supports_bf16
    from edgediff.bench.runner import TelemetryOptions
    from edgediff.bench.suite import BenchConfig, run_bench
    from edgediff.quality.bench_hook import make_quality_hook
    from edgediff.variants import openvino_runtime

    avail = get_variant("openvino-int8").availability()
    if not avail.ok:
        pytest.skip(f"openvino-int8: {avail.reason}")
    if bf16 == "without":
        if not cpu_supports_bf16():
            pytest.skip("this CPU has no bf16: the 'as this CPU' case ran this path")
        monkeypatch.setattr(openvino_runtime, "cpu_supports_bf16", lambda: False)
    row = "openvino-int8@unipc:5"
    config = BenchConfig(model="digits", variants=[row], steps=20, runs=1, warmup=0, threads=2, isolate=False,
                         telemetry=TelemetryOptions(enabled=False), out=tmp_path)
    report, _ = run_bench(config, quality_fn=make_quality_hook(config), progress=None)
    entry = {e["name"]: e for e in report["variants"]}[row]
    assert entry["quality"]["gate"]["status"] == "PASSED", entry["quality"]["summary"]
    assert entry["info"]["steps"] == 5
    assert entry["info"]["compile_precision"] == ("bf16" if openvino_runtime.cpu_supports_bf16() else "fp32")
    assert (openvino_runtime.int8_ir_format() in entry["info"]["artifacts"]["unet"]["path"]) is True
