"""A model's tensors one at a time, without ever building the model: from a weights folder or seeded synthetic.

The low-memory variants write their compact weights file from this stream (``edgediff.artifacts.torch_compact``),
so a phone's first run holds one tensor of the model at a time instead of the fp32 model (1.3 GB for celebahq-256).

* **A weights folder** (diffusers layout): each tensor is read alone with ``safetensors.safe_open`` (a ``.bin``
  checkpoint is mapped with ``torch.load(mmap=True)``), renamed as diffusers renames old attention blocks on load
  (``query`` -> ``to_q`` ...), checked against the architecture's shape, and given as fp32.
* **Seeded synthetic weights**: ``load_modules`` builds the modules under ``torch.manual_seed(seed)``, so each
  tensor is what its initialiser drew from the generator at that point of the construction. Here the modules are
  built on the ``meta`` device (no memory) under a dispatch mode that records, per tensor, the in-place
  initialisers applied to it and the CPU generator's state before each random one (and advances the generator as
  the real construction does, on a scratch tensor). A tensor is then replayed alone: same state, same op, same
  shape: the very values ``load_modules`` produces (``tests/perf/test_weight_stream.py`` checks bit equality).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import edgediff.models.weights as model_weights
from edgediff.errors import EdgediffError, WeightsError
from edgediff.models.spec import ModelSpec

PARTS = ("unet", "vqvae")
"""The model's parts, in the order ``load_modules`` builds them (the synthetic generator's order)."""
LEGACY_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
"""Old attention tensor names -> today's (what diffusers' ``_fix_state_dict_keys_on_load`` renames)."""

_aten = torch.ops.aten
_RANDOM_OPS = {_aten.uniform_.default: "uniform_", _aten.normal_.default: "normal_"}
_FILL_OPS = {_aten.fill_.Scalar: "fill_", _aten.zero_.default: "zero_"}
_CREATE_OPS = (_aten.empty.memory_format,)
_ALIAS_OPS = (_aten.detach.default,)


class UnsupportedInitError(EdgediffError):
    """A module's initialiser does something the synthetic stream cannot replay tensor by tensor."""


@dataclass
class _Init:
    """One in-place initialiser of a tensor: ``getattr(tensor, method)(*args, **kwargs)`` from generator ``state``."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: torch.Tensor | None


class _InitRecorder(TorchDispatchMode):
    """Records the initialisers of every tensor a module builds on ``meta``, keyed by the tensor's storage.

    Random initialisers advance the real CPU generator exactly as they would on the CPU (the same op on a scratch
    tensor of the same shape, freed at once), so later tensors' states are the real construction's.

    Args:
        record: False only drops the initialisers (a skeleton: no generator work; other ops run on meta).
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """False: torch would wrap ``__torch_dispatch__`` in dynamo's ``disable``, importing ``torch._dynamo``."""
        return False

    def __init__(self, record: bool = True) -> None:
        super().__init__()
        self.record = record
        self.inits: dict[int, list[_Init]] = {}
        self._keep: list[torch.Tensor] = []  # the storages stay alive, so their keys are never reused

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.record:  # on meta, nn.init's random ops would run torch._refs decompositions (torch._dynamo)
            return args[0] if func in _RANDOM_OPS or func in _FILL_OPS else func(*args, **kwargs)
        if func in _CREATE_OPS:
            out = func(*args, **kwargs)
            self._keep.append(out)
            self.inits[_key(out)] = []
            return out
        if func in _ALIAS_OPS:
            return func(*args, **kwargs)
        if func not in _RANDOM_OPS and func not in _FILL_OPS:
            raise UnsupportedInitError(f"synthetic weights: initialiser op {func} cannot be replayed per tensor")
        target = args[0]
        if target.storage_offset() != 0 or not target.is_contiguous() or _key(target) not in self.inits:
            raise UnsupportedInitError(f"synthetic weights: {func} on a view of a tensor cannot be replayed")
        state = None
        if func in _RANDOM_OPS:
            method = _RANDOM_OPS[func]
            state = torch.get_rng_state()
            getattr(torch.empty(tuple(target.shape), dtype=target.dtype), method)(*args[1:], **kwargs)
        else:
            method = _FILL_OPS[func]
        self.inits[_key(target)].append(_Init(method, tuple(args[1:]), dict(kwargs), state))
        return target


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def diffusers_classes() -> tuple[Any, Any]:
    """``(UNet2DModel, VQModel)`` from diffusers (the low-memory variants pass a leaner import of the same)."""
    from diffusers import UNet2DModel, VQModel

    return UNet2DModel, VQModel


def meta_module(cls: Any, config: dict[str, Any], recorder: _InitRecorder | None = None) -> Any:
    """``cls(**config)`` on the ``meta`` device: the structure, no weights, no memory.

    Initialisers are recorded by ``recorder``, or dropped (without running ``torch._refs`` decompositions, which would
    import ``torch._dynamo``: 100 MB) when it is None.
    """
    mode = recorder if recorder is not None else _InitRecorder(record=False)
    with torch.device("meta"), mode:
        return cls(**config).eval().requires_grad_(False)


@dataclass
class TensorStream:
    """A model's tensors, announced first (names and shapes), then produced one at a time.

    Attributes:
        shapes: ``(name, shape)`` of every tensor ``tensors()`` yields; names are ``<part>.<state dict key>``.
    """

    shapes: list[tuple[str, tuple[int, ...]]]
    _produce: Callable[[], Iterator[tuple[str, torch.Tensor]]]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, fp32 tensor)`` pairs (in any order), one in memory at a time (the caller drops each)."""
        return self._produce()


def model_stream(model: ModelSpec, *, keep: Callable[[str], bool] | None = None,
                 classes: tuple[Any, Any] | None = None) -> TensorStream:
    """The tensors of ``model`` (its preset with its weights), never holding more than one of them.

    ``model``'s modules are not used (nor loaded): a spec from ``describe_model`` is enough.

    Args:
        model: The model.
        keep: Which ``<part>.<name>`` tensors to stream (None: all).
        classes: ``(UNet2DModel, VQModel)``; None imports them from diffusers.

    Raises:
        WeightsError: a folder's tensor is missing or does not fit the architecture.
        UnsupportedInitError: synthetic weights whose initialisers cannot be replayed per tensor.
    """
    classes = classes or diffusers_classes()
    configs = {"unet": model.preset.unet_config, "vqvae": model.preset.vqvae_config}
    keep = keep or (lambda name: True)
    origin = model.weights
    if origin.path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(origin.seed or 0)
            recorder = _InitRecorder()
            modules = {part: meta_module(cls, configs[part], recorder)
                       for part, cls in zip(PARTS, classes, strict=True)}
        produce = _synthetic(modules, recorder, keep)
    else:
        modules = {part: meta_module(cls, configs[part]) for part, cls in zip(PARTS, classes, strict=True)}
        produce = _from_folder(Path(origin.path), modules, keep)
    shapes = [(f"{part}.{name}", tuple(t.shape)) for part, module in modules.items()
              for name, t in module.state_dict().items() if keep(f"{part}.{name}")]
    return TensorStream(shapes, produce)


def _synthetic(modules: dict[str, Any], recorder: _InitRecorder,
               keep: Callable[[str], bool]) -> Callable[[], Iterator[tuple[str, torch.Tensor]]]:
    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        for part, module in modules.items():
            for name, meta in module.state_dict().items():
                if not keep(f"{part}.{name}"):
                    continue
                inits = recorder.inits.get(_key(meta))
                if not inits:
                    raise UnsupportedInitError(f"synthetic weights: {part}.{name} has no recorded initialiser")
                value = torch.empty(tuple(meta.shape), dtype=meta.dtype)
                with torch.random.fork_rng(devices=[]):
                    for init in inits:
                        if init.state is not None:
                            torch.set_rng_state(init.state)
                        getattr(value, init.method)(*init.args, **init.kwargs)
                yield f"{part}.{name}", value.float()

    return produce


def _renamed(name: str, wanted: dict[str, Any]) -> str:
    """``name`` as today's diffusers calls it (old attention names renamed only where the architecture wants it)."""
    if name in wanted:
        return name
    for old, new in LEGACY_ATTENTION.items():
        if old in name and name.replace(old, new) in wanted:
            return name.replace(old, new)
    return name


def _from_folder(folder: Path, modules: dict[str, Any],
                 keep: Callable[[str], bool]) -> Callable[[], Iterator[tuple[str, torch.Tensor]]]:
    def produce() -> Iterator[tuple[str, torch.Tensor]]:
        for part, module in modules.items():
            wanted = {k: tuple(v.shape) for k, v in module.state_dict().items() if keep(f"{part}.{k}")}
            sub_dir = folder / part
            weight_file = next((sub_dir / n for n in model_weights.WEIGHT_FILES if (sub_dir / n).is_file()), None)
            if weight_file is None:
                raise WeightsError(f"--weights: missing {sub_dir}/{model_weights.WEIGHT_FILES[0]} (or .bin)")
            seen: set[str] = set()
            for stored, read in _file_tensors(weight_file):
                name = _renamed(stored, wanted)
                if name not in wanted:
                    continue
                tensor = read()
                if tuple(tensor.shape) != wanted[name]:
                    raise WeightsError(f"--weights: tensor {stored} in {weight_file} has shape {list(tensor.shape)}, "
                                       f"the architecture needs {list(wanted[name])}")
                seen.add(name)
                yield f"{part}.{name}", tensor.float()
            missing = sorted(set(wanted) - seen)
            if missing:
                raise WeightsError(f"--weights: tensor {missing[0]} is missing from {weight_file} "
                                   f"({len(missing)} missing)")

    return produce


def _file_tensors(path: Path) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """``(name, reader)`` of each tensor of a weights file; a reader reads that tensor alone."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            for name in list(fh.keys()):
                yield name, lambda name=name: fh.get_tensor(name)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for a bad checkpoint; the user needs the message
        raise WeightsError(f"--weights: {path} is not a valid PyTorch checkpoint: {exc}") from exc
    for name in list(state):
        yield name, lambda name=name: state.pop(name)
