"""The streamed weights (no model built) are the loaded model's, and the streamed compact file is the in-process one.

The streaming build's memory is measured by ``benchmarks/lowmem_peak.py`` in a fresh process with an empty cache
(benchmarks/RESULTS.md), not here.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgediff.artifacts.torch_compact import FILENAME, VQVAE_PREFIXES, build_compact, write_compact
from edgediff.artifacts.weight_stream import model_stream
from edgediff.errors import WeightsError
from edgediff.models import load_components, save_components
from edgediff.models.spec import describe_model


def _state(spec) -> dict[str, torch.Tensor]:
    return ({f"unet.{k}": v for k, v in spec.unet.state_dict().items()}
            | {f"vqvae.{k}": v for k, v in spec.vqvae.state_dict().items()})


def _assert_same(stream, reference: dict[str, torch.Tensor]) -> None:
    got = dict(stream.tensors())
    assert set(got) == set(reference) == {name for name, _ in stream.shapes}
    for name, value in reference.items():
        assert torch.equal(got[name], value), name


def test_synthetic_stream_is_the_seeded_model_bit_exactly(tiny_components):
    spec = describe_model(tiny_components.preset)
    assert not spec.has_modules
    _assert_same(model_stream(spec), _state(tiny_components))
    assert not spec.has_modules  # streamed without loading them


def test_synthetic_stream_depends_on_the_seed(tiny_components):
    other = model_stream(describe_model(tiny_components.preset, seed=1))
    name, value = next((n, v) for n, v in other.tensors() if n.endswith("conv_in.weight"))
    assert not torch.equal(value, _state(tiny_components)[name])


def test_folder_stream_is_the_loaded_model_with_old_attention_names(tiny_components, tmp_path):
    folder = save_components(tiny_components, tmp_path / "weights")
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    renamed = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v.half() for k, v in state.items()}
    assert renamed.keys() != state.keys()  # the tiny UNet has attention blocks: old names are exercised
    save_file(renamed, str(path))
    loaded = load_components(tiny_components.preset, folder, warn=False)
    _assert_same(model_stream(describe_model(tiny_components.preset, folder)), _state(loaded))


def test_folder_stream_names_a_tensor_that_does_not_fit(tiny_components, tmp_path):
    folder = save_components(tiny_components, tmp_path / "weights")
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["conv_in.weight"] = torch.zeros(1, 2, 3, 3)
    save_file(state, str(path))
    stream = model_stream(describe_model(tiny_components.preset, folder))
    with pytest.raises(WeightsError, match=r"conv_in\.weight"):
        list(stream.tensors())


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_streamed_compact_file_is_the_in_process_one(tiny_components, tmp_path, dtype):
    """The file the low-memory variant streams equals, byte for byte, the one written from the loaded modules."""
    folder, report = build_compact(describe_model(tiny_components.preset), dtype)
    kept = [(n, t) for n, t in _state(tiny_components).items()
            if n.startswith("unet.") or n.removeprefix("vqvae.").startswith(VQVAE_PREFIXES)]
    reference = tmp_path / "in-process.safetensors"
    write_compact(iter(kept), [(n, tuple(t.shape)) for n, t in kept], reference, dtype,
                  metadata={"preset": "tiny", "fingerprint": tiny_components.fingerprint()})
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(folder / FILENAME) == digest(reference)
    assert report["bytes"] == reference.stat().st_size and not any(".encoder." in n for n, _ in kept)
