"""``edgediff tune``: the choice is always a row that passed the gate, and a profile from another machine is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgediff.bench import tune as tune_mod
from edgediff.bench.tune import (
    ProfileError,
    TuneConfig,
    budget_profile_defaults,
    gate_settings,
    load_profile,
    machine_fingerprint,
    profile_defaults,
    profile_path,
    tune,
    write_profile,
)
from edgediff.schedulers import scheduler_settings


def _entry(name, *, p50, passed=None, role="variant", status="ok", fd=1.0, peak_mb=None, setup_mb=None):
    quality = None if passed is None else {
        "gate": {"passed": passed, "status": "PASSED" if passed else "FAILED", "reasons": []},
        "scores": {"digits_fd": fd}, "baseline_scores": {"digits_fd": 1.0}, "summary": "x"}
    memory = {"peak_bytes": None if peak_mb is None else peak_mb * 2**20,
              "setup_peak_rss_bytes": None if setup_mb is None else setup_mb * 2**20}
    return {"name": name, "role": role, "status": status, "quality": quality, "info": {"threads": 2},
            "latency": {"total": {"p50_s": p50}}, "speedup_vs_baseline": 10.0 / p50, "memory": memory}


def _fake_bench(gates: dict[str, bool], speeds: dict[str, float], calls: list, fds: dict[str, float] | None = None,
                peaks: dict[str, tuple[float, float]] | None = None):
    """Stand-in for the bench stages: gates, speeds, scores and peaks are the test's inputs (not measurements)."""

    def bench(config, *, model, rows, out, runs, warmup, say):
        calls.append((out.name, list(rows)))
        entries = [_entry("torch-fp32", p50=10.0, passed=True, role="baseline", peak_mb=2300, setup_mb=2200)]
        for row in rows:
            if row == "torch-fp32":
                continue
            if out.name == "speed":
                peak, setup = (peaks or {}).get(row, (None, None))
                entries.append(_entry(row, p50=speeds[row], peak_mb=peak, setup_mb=setup))
            else:
                entries.append(_entry(row, p50=1.0, passed=gates.get(row, False), fd=(fds or {}).get(row, 1.0)))
        return {"variants": entries, "weights": {"label": "synthetic"}}

    return bench


def test_tune_picks_the_fastest_passing_row_never_a_failing_one(tmp_path, monkeypatch):
    gates = {"torch-fp32@dpmpp:10": True, "torch-fp32@unipc:10": False,  # stage 1: unipc fails, dpmpp passes
             "fast-a@ddim:20": True, "fast-a@dpmpp:10": False,            # fast-a only passes with DDIM-20
             "fast-b@ddim:20": True, "fast-b@dpmpp:10": True,
             "wrong@ddim:20": False, "wrong@dpmpp:10": False}             # the fastest fails everywhere
    speeds = {"fast-a@ddim:20": 2.0, "fast-b@dpmpp:10": 2.5, "wrong@ddim:20": 0.1, "wrong@dpmpp:10": 0.05}
    calls: list = []
    monkeypatch.setattr(tune_mod, "_bench", _fake_bench(gates, speeds, calls))
    monkeypatch.setattr(tune_mod, "candidate_variants", lambda names, **_: (["fast-a", "fast-b", "wrong"], {}))
    config = TuneConfig(model="tiny", samplers=(("dpmpp", 10), ("unipc", 10), ("unipc", 8)), out=tmp_path / "r",
                        profile_root=tmp_path)
    profile = tune(config, say=lambda _line: None)
    assert profile["choice"] == {"variant": "fast-a", "scheduler": "ddim", "steps": 20, "threads": 2,
                                 "scheduler_settings": {}, "variant_settings": {}}
    speed_rows = dict(calls)["speed"]
    assert "wrong@ddim:20" not in speed_rows and "wrong@dpmpp:10" not in speed_rows  # never even timed
    assert sorted(speed_rows) == ["fast-a@ddim:20", "fast-b@dpmpp:10", "torch-fp32"]  # cheapest passing row each
    assert dict(calls)["samplers"] == ["torch-fp32@dpmpp:10", "torch-fp32@unipc:10", "torch-fp32@unipc:8"]
    assert not any("unipc" in row for row in dict(calls)["quality"])  # a sampler that failed stage 1 is dropped
    saved = json.loads(profile_path("tiny", tmp_path).read_text())
    assert saved["choice"]["variant"] == "fast-a" and saved["quality"]["gate"]["passed"] is True
    assert saved["machine"] == machine_fingerprint()


def test_at_equal_steps_tune_times_the_row_with_the_better_quality(tmp_path, monkeypatch):
    gates = {"torch-fp32@dpmpp:5": True, "torch-fp32@unipc:5": True, "fast@ddim:20": True, "fast@dpmpp:5": True,
             "fast@unipc:5": True}
    fds = {"fast@dpmpp:5": 193.4, "fast@unipc:5": 181.9}  # both pass at 5 steps; unipc is closer to the reference
    calls: list = []
    monkeypatch.setattr(tune_mod, "_bench", _fake_bench(gates, {"fast@unipc:5": 1.0}, calls, fds))
    monkeypatch.setattr(tune_mod, "candidate_variants", lambda names, **_: (["fast"], {}))
    config = TuneConfig(model="tiny", samplers=(("dpmpp", 5), ("unipc", 5)), out=tmp_path / "r", profile_root=tmp_path)
    profile = tune(config, say=lambda _line: None)
    assert dict(calls)["speed"] == ["torch-fp32", "fast@unipc:5"]
    assert profile["choice"]["scheduler"] == "unipc" and profile["choice"]["steps"] == 5


def test_tune_refuses_when_nothing_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_mod, "_bench", _fake_bench({}, {}, []))
    monkeypatch.setattr(tune_mod, "candidate_variants", lambda names, **_: (["wrong"], {}))
    with pytest.raises(ProfileError, match="no candidate passed the quality gate"):
        tune(TuneConfig(model="tiny", samplers=(), out=tmp_path / "r", profile_root=tmp_path), say=lambda _l: None)
    assert not profile_path("tiny", tmp_path).exists()


def _profile(machine, settings=None):
    return {"schema": 1, "model": "tiny", "machine": machine,
            "choice": {"variant": "openvino-fp32-dc3", "scheduler": "dpmpp", "steps": 10, "threads": 2,
                       "scheduler_settings": scheduler_settings("dpmpp") if settings is None else settings}}


def test_a_profile_from_another_machine_is_refused(tmp_path):
    here = machine_fingerprint()
    other = {**here, "cpu_model": "Some Other CPU", "cpu_flags": [*here["cpu_flags"], "avx512_bf16"]}
    write_profile(_profile(other), profile_path("tiny", tmp_path))
    with pytest.raises(ProfileError, match=r"written on another machine.*cpu_model.*--revalidate"):
        load_profile("tiny", root=tmp_path)
    warnings: list[str] = []
    assert profile_defaults("tiny", root=tmp_path, warn=warnings.append) is None
    assert len(warnings) == 1 and "refused" in warnings[0]

    write_profile(_profile(here), profile_path("tiny", tmp_path))
    assert profile_defaults("tiny", root=tmp_path) == {"variant": "openvino-fp32-dc3", "scheduler": "dpmpp",
                                                       "steps": 10, "threads": 2}


def test_revalidate_checks_only_the_saved_choice(tmp_path, monkeypatch):
    here = machine_fingerprint()
    write_profile(_profile({**here, "cpu_model": "Some Other CPU"}), profile_path("tiny", tmp_path))
    calls: list = []
    monkeypatch.setattr(tune_mod, "_bench", _fake_bench({"openvino-fp32-dc3@dpmpp:10": True},
                                                        {"openvino-fp32-dc3@dpmpp:10": 1.0}, calls))
    profile = tune(TuneConfig(model="tiny", out=tmp_path / "r", profile_root=tmp_path, revalidate=True),
                   say=lambda _l: None)
    assert [stage for stage, _ in calls] == ["quality", "speed"]
    assert dict(calls)["quality"] == ["openvino-fp32-dc3@dpmpp:10"]
    assert load_profile("tiny", root=tmp_path)["choice"] == profile["choice"]  # now valid here


def test_a_profile_gated_with_other_sampler_settings_is_refused(tmp_path, monkeypatch):
    # e.g. written before the multistep solvers stepped through Karras sigmas: its gate verdict was about another
    # sampler, so it is refused until --revalidate gates its choice again with today's settings
    here = machine_fingerprint()
    old = {k: v for k, v in scheduler_settings("dpmpp").items() if k != "use_karras_sigmas"}
    write_profile(_profile(here, settings=old), profile_path("tiny", tmp_path))
    with pytest.raises(ProfileError, match=r"other sampler settings \(dpmpp: profile .* now .*--revalidate"):
        load_profile("tiny", root=tmp_path)
    unrecorded = _profile(here)
    del unrecorded["choice"]["scheduler_settings"]
    write_profile(unrecorded, profile_path("tiny", tmp_path))
    with pytest.raises(ProfileError, match="not recorded"):
        load_profile("tiny", root=tmp_path)
    monkeypatch.setattr(tune_mod, "_bench", _fake_bench({"openvino-fp32-dc3@dpmpp:10": True},
                                                        {"openvino-fp32-dc3@dpmpp:10": 1.0}, []))
    tune(TuneConfig(model="tiny", out=tmp_path / "r", profile_root=tmp_path, revalidate=True), say=lambda _l: None)
    assert load_profile("tiny", root=tmp_path)["choice"]["scheduler_settings"] == scheduler_settings("dpmpp")


def test_a_profile_gated_with_other_variant_settings_is_refused(tmp_path, monkeypatch):
    # e.g. openvino-int8 gated on a CPU without bf16 before its linear weights were compressed there: the verdict was
    # about other numbers, so the profile is refused until --revalidate gates the choice again
    from edgediff.variants import openvino_runtime

    monkeypatch.setattr(openvino_runtime, "cpu_supports_bf16", lambda: False)
    here = machine_fingerprint()
    profile = _profile(here)
    profile["choice"]["variant"] = "openvino-int8"
    write_profile(profile, profile_path("tiny", tmp_path))  # written before variant_settings were recorded
    with pytest.raises(ProfileError, match=r"other variant settings \(openvino-int8: profile none, now .*"
                                           r"int8_linear_weights.*--revalidate"):
        load_profile("tiny", root=tmp_path)
    monkeypatch.setattr(tune_mod, "_bench", _fake_bench({"openvino-int8@dpmpp:10": True},
                                                        {"openvino-int8@dpmpp:10": 1.0}, []))
    tune(TuneConfig(model="tiny", out=tmp_path / "r", profile_root=tmp_path, revalidate=True), say=lambda _l: None)
    choice = load_profile("tiny", root=tmp_path)["choice"]
    assert choice["variant_settings"] == {"int8_linear_weights": openvino_runtime.LINEAR_WEIGHTS}

    monkeypatch.setattr(openvino_runtime, "cpu_supports_bf16", lambda: True)  # a variant without such settings
    with pytest.raises(ProfileError, match=r"profile \{'int8_linear_weights'.*now none"):
        load_profile("tiny", root=tmp_path)
    profile["choice"]["variant"] = "openvino-fp32"  # and an old profile of a variant that never had any: valid
    write_profile(profile, profile_path("tiny", tmp_path))
    assert load_profile("tiny", root=tmp_path)["choice"]["variant"] == "openvino-fp32"


def test_unreadable_profile_is_a_clear_error(tmp_path):
    path = profile_path("tiny", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="unreadable"):
        load_profile("tiny", root=tmp_path)


def test_candidates_come_from_the_registry_and_its_probes():
    from edgediff.variants import BASELINE, get_variant

    names, skipped = tune_mod.candidate_variants()
    assert BASELINE not in names and names
    for name in names:
        assert get_variant(name).availability().ok
    for name, why in skipped.items():
        assert why and (not get_variant(name).availability().ok or "-lowmem" in name)


def _budget_tune(tmp_path, monkeypatch, budget):
    """A tune under ``budget`` MiB over fake rows: a fast big one, a slower small one, a slowest smallest one."""
    gates = {"torch-fp32@unipc:5": True, "fast-big@unipc:5": True, "phone@unipc:5": True, "tiny-slow@unipc:5": True}
    speeds = {"fast-big@unipc:5": 3.0, "phone@unipc:5": 9.0, "tiny-slow@unipc:5": 30.0}
    peaks = {"fast-big@unipc:5": (2900, 4500),   # its build spike counts against a budget, not only its timed peak
             "phone@unipc:5": (560, 580), "tiny-slow@unipc:5": (400, 390)}
    asked: dict = {}

    def candidates(names, **kwargs):
        asked.update(kwargs)
        return ["fast-big", "phone", "tiny-slow"], {}

    monkeypatch.setattr(tune_mod, "_bench", _fake_bench(gates, speeds, [], peaks=peaks))
    monkeypatch.setattr(tune_mod, "candidate_variants", candidates)
    config = TuneConfig(model="tiny", samplers=(("unipc", 5),), out=tmp_path / "r", profile_root=tmp_path,
                        max_memory_mb=budget)
    return tune(config, say=lambda _line: None), asked


def test_max_memory_picks_the_fastest_passing_row_that_fits(tmp_path, monkeypatch):
    profile, asked = _budget_tune(tmp_path, monkeypatch, 600)
    assert asked == {"low_memory": True}  # the low-memory variants are candidates under a budget
    assert profile["choice"]["variant"] == "phone" and profile["speed"]["peak_mb"] == 580
    assert {c["row"]: c["fits"] for c in profile["candidates"]} == {
        "fast-big@unipc:5": False, "phone@unipc:5": True, "tiny-slow@unipc:5": True}
    assert profile_path("tiny", tmp_path, 600).is_file() and not profile_path("tiny", tmp_path).exists()
    plot = profile["reports"]["speed_memory_png"]
    assert plot.endswith("speed_memory.png") and Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    roomy, _ = _budget_tune(tmp_path, monkeypatch, 5000)
    assert roomy["choice"]["variant"] == "fast-big"


def test_max_memory_refuses_when_no_row_fits(tmp_path, monkeypatch):
    with pytest.raises(ProfileError, match=r"fits in --max-memory 300 MiB; the smallest was tiny-slow@unipc:5 at 400"):
        _budget_tune(tmp_path, monkeypatch, 300)
    assert not profile_path("tiny", tmp_path, 300).exists()


def test_budget_defaults_use_the_largest_budget_that_fits(tmp_path):
    here = machine_fingerprint()
    for mb, variant in ((600, "torch-int8-lowmem"), (3500, "openvino-int8")):
        choice = {**_profile(here)["choice"], "variant": variant, "variant_settings": gate_settings(variant)}
        write_profile({**_profile(here), "choice": choice}, profile_path("tiny", tmp_path, mb))
    assert budget_profile_defaults("tiny", 500 * 2**20, root=tmp_path) is None
    assert budget_profile_defaults("tiny", 1024**3, root=tmp_path)["variant"] == "torch-int8-lowmem"
    found = budget_profile_defaults("tiny", 4 * 1024**3, root=tmp_path)
    assert found["variant"] == "openvino-int8" and found["max_memory_mb"] == 3500
    assert profile_defaults("tiny", root=tmp_path) is None  # the plain profile is another file


def test_low_memory_variants_are_candidates_only_under_a_budget():
    plain, skipped = tune_mod.candidate_variants()
    budget, _ = tune_mod.candidate_variants(low_memory=True)
    assert "torch-int8-lowmem" in budget and "torch-int8-lowmem" not in plain and "torch-int8-lowmem" in skipped


def test_measured_peaks_come_from_this_machines_profiles(tmp_path, monkeypatch):
    _budget_tune(tmp_path, monkeypatch, 600)
    _budget_tune(tmp_path, monkeypatch, 5000)
    peaks = tune_mod.measured_peaks("tiny", root=tmp_path)
    assert peaks == {"fast-big": 4500, "phone": 580, "tiny-slow": 400, "torch-fp32": 2300}
    other = {**machine_fingerprint(), "cpu_model": "Some Other CPU"}
    write_profile({**_profile(other), "candidates": [{"row": "elsewhere@unipc:5", "peak_mb": 1}]},
                  profile_path("tiny", tmp_path))
    assert "elsewhere" not in tune_mod.measured_peaks("tiny", root=tmp_path)  # another machine's numbers: not shown
