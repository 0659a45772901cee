"""The OpenVINO variants hold no torch module: the model is described from its configs, IRs come from the cache.

Memory itself is measured by ``benchmarks/fast_default_peak.py`` (a benchmark, not a timed test); these tests pin the
mechanism: what the process holds, and that exports the cache lacks run in a child process.
"""

from __future__ import annotations

import gc
import inspect
import mmap
import os
import types

import pytest
import torch

from edgediff.artifacts import prepare
from edgediff.models import get_preset, load_components, save_components
from edgediff.models.spec import describe_model
from edgediff.models.weights import VQMODEL_SCALING_FACTOR
from edgediff.variants import BuildOptions, build_variant, get_variant
from edgediff.variants.mapped_weights import drop_mapped_pages, read_only_mappings, releasing_mapped_pages
from tests.perf.conftest import STEPS, skip_unless_available

VARIANT = "openvino-fp32"  # the int8 variants load the same way, after a calibration too slow for a unit test


def _torch_modules_reachable(root: object, limit: int = 200_000) -> list[str]:
    """Class names of the ``torch.nn.Module`` instances that ``root`` holds.

    Follows objects' references, and of functions only what they captured (closure cells, defaults): not their
    module's globals, nor modules and classes, which reach everything loaded.
    """
    seen, stack, found = set(), [root], []
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, types.ModuleType | type):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(type(obj).__name__)
        elif isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or ())
            stack.extend([*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()])
        else:
            stack.extend(gc.get_referents(obj))
    return found


def test_the_vq_default_scaling_factor_is_diffusers_own():
    from diffusers import VQModel

    assert inspect.signature(VQModel.__init__).parameters["scaling_factor"].default == VQMODEL_SCALING_FACTOR


@pytest.mark.parametrize("from_folder", [False, True])
def test_a_described_model_equals_the_loaded_one_without_modules(tiny_components, tmp_path, from_folder):
    preset = get_preset("tiny")
    weights = str(save_components(tiny_components, tmp_path / "weights")) if from_folder else None
    loaded = load_components(preset, weights, warn=False)
    described = describe_model(preset, weights)
    assert not described.has_modules
    assert described.to_dict() == loaded.to_dict()


def test_the_variant_runs_from_its_artifacts_without_a_torch_module(tiny_components, baseline_result):
    skip_unless_available(VARIANT)
    variant = get_variant(VARIANT)
    variant.prepare(tiny_components, BuildOptions())  # the cache holds the IRs, as after a first run
    model = variant.load_model(get_preset("tiny"))
    built = build_variant(VARIANT, model, BuildOptions(threads=1))
    result = built.pipeline(model)(seed=3, steps=STEPS)
    assert not model.has_modules
    assert _torch_modules_reachable(built) == []
    assert _torch_modules_reachable(build_variant("torch-fp32", tiny_components))  # the check sees modules held
    in_process = build_variant(VARIANT, tiny_components, BuildOptions(threads=1)).pipeline(tiny_components)
    assert torch.equal(result.latents, in_process(seed=3, steps=STEPS).latents)


@pytest.mark.slow
def test_missing_artifacts_are_exported_by_a_child_process(tmp_path, monkeypatch):
    skip_unless_available(VARIANT)
    monkeypatch.setenv("EDGEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = prepare.prepare_in_subprocess

    def recorded(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(prepare, "prepare_in_subprocess", recorded)
    variant = get_variant(f"{VARIANT}-dc3")
    model = variant.load_model(get_preset("tiny"))
    built = variant.build(model, BuildOptions(threads=1))
    assert [(c["variant"], c["deepcache"]) for c in calls] == [(VARIANT, 3)]
    assert set(built.info["artifacts"]) == {"unet-full", "unet-shallow", "vqdec"}
    assert not model.has_modules
    variant.build(model, BuildOptions(threads=1))  # found in the cache now: no second export
    assert len(calls) == 1


def _rss_file_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_mapped_pages_are_given_back_and_read_again(tmp_path):
    path = tmp_path / "model.bin"
    data = os.urandom(1 << 20) * 32  # 32 MB
    path.write_bytes(data)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert read_only_mappings(path) and sum(mapped[i] for i in range(0, len(data), 4096)) >= 0
        resident = _rss_file_kb()
        assert drop_mapped_pages(path) >= len(data)
        assert resident - _rss_file_kb() > 24 * 1024  # the pages left the resident set
        assert mapped[:] == data  # and come back, unchanged, when read
        with releasing_mapped_pages(path, poll_s=0.001):
            assert mapped[-5:] == data[-5:]
    assert read_only_mappings(path) == [] and drop_mapped_pages(path) == 0


def test_only_read_only_mappings_of_the_file_are_named(tmp_path):
    maps = tmp_path / "maps"
    target = tmp_path / "model.bin"
    maps.write_text(f"7f0000000000-7f0000100000 r--s 00000000 08:01 12 {target}\n"
                    f"7f0000100000-7f0000200000 rw-p 00000000 08:01 12 {target}\n"
                    f"7f0000200000-7f0000300000 r--p 00000000 08:01 13 {target}.other\n"
                    "7f0000300000-7f0000400000 rw-p 00000000 00:00 0\n")
    assert read_only_mappings(target, maps=str(maps)) == [(0x7F0000000000, 0x7F0000100000)]
