"""Compact weights for the plain-PyTorch low-memory variant: one safetensors file, read through ``mmap``.

The file holds the UNet's and the VQ decoder's tensors (``unet.<name>``, ``vqvae.<name>``; the VQ encoder is left
out: generation never encodes) in a compact dtype:

* ``int8``: weight-only int8 with one fp32 scale per output channel (``<name>`` int8 and ``<name>.scale``, symmetric:
  ``w ~ q * scale``) for convolution and linear weights; biases, norms, the VQ codebook and the model's first and last
  convolutions (``KEEP_FLOAT``) stay float16. A quarter of the fp32 bytes;
* ``fp32``: every tensor as it is (for tests: it materialises exactly the fp32 model).

The file is ordinary safetensors (``safetensors.safe_open`` reads it), written tensor by tensor from the model's
weights files or its seeded synthetic generator (``edgediff.artifacts.weight_stream``), so preparing it never holds
the fp32 model: a phone's first run fits in the variant's own memory. It is laid out for ``mmap``: the data starts
on a page boundary and the tensors are ordered by element size (fp32, fp16, int8), so every tensor is aligned for its
dtype.
``CompactWeights`` maps it read-only and materialises one tensor at a time as fp32; the file's pages it touched are
then dropped from the process (``madvise(MADV_DONTNEED)``): a mapped file's resident pages count in the process's
RSS, and the page cache (not the process) keeps them for the next step.

It is prepared once per model and cached by content hash beside the other artifacts (``edgediff.artifacts.cache``),
with the model's ``ModelSpec`` (``spec.json``), so a low-memory process finds both by the model's fingerprint without
building a torch module.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from edgediff.artifacts.cache import cached_build, find_cached
from edgediff.artifacts.weight_stream import model_stream
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.models.spec import ModelSpec

FILENAME = "weights.safetensors"
COMPACT_FORMAT = 1
"""Bump when the file's layout or quantization changes."""
DTYPES = ("fp32", "int8")
"""Storage dtypes (``fp32`` is for tests: it materialises exactly the fp32 model)."""
KEEP_FLOAT = ("unet.conv_in.", "unet.conv_out.", "vqvae.decoder.conv_in.", "vqvae.decoder.conv_out.",
              "vqvae.post_quant_conv.", "vqvae.quantize.")
"""Tensors that ``int8`` keeps float16: the first and last convolutions and the codebook (nearest-code lookups
are sensitive to it)."""
INT8_MIN_ELEMENTS = 1024
"""Smaller weights are not worth a scale each and stay float16."""
SCALE_SUFFIX = ".scale"
VQVAE_PREFIXES = ("decoder.", "post_quant_conv.", "quantize.")
"""The VQ model's tensors that decoding uses."""
SCALE_EPS = 1e-12

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int8: "I8"}
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}
_SIZES = {"F32": 4, "F16": 2, "I8": 1}
PAGE = mmap.PAGESIZE
FAULT_AROUND_BYTES = 64 * 1024
"""Linux maps up to this much around a faulting page of a file (``fault_around_bytes``): dropped with the tensor."""


def check_dtype(dtype: str) -> str:
    """Return ``dtype`` if it is a storage dtype, else raise ``InvalidArgumentError``."""
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"compact weights dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def _quantizes(name: str, shape: tuple[int, ...], dtype: str) -> bool:
    numel = 1
    for n in shape:
        numel *= n
    return (dtype == "int8" and name.endswith(".weight") and len(shape) >= 2 and numel >= INT8_MIN_ELEMENTS
            and not name.startswith(KEEP_FLOAT))


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (dim 0): ``(q int8, scale fp32 [out])`` with ``weight ~ q * scale``."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp(min=SCALE_EPS)
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def _entries(name: str, shape: tuple[int, ...], dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """The file entries ``(name, safetensors dtype, shape)`` one source tensor becomes."""
    if _quantizes(name, shape, dtype):
        return [(name, "I8", shape), (name + SCALE_SUFFIX, "F32", (shape[0],))]
    return [(name, "F32" if dtype == "fp32" else "F16", shape)]


def _convert(name: str, tensor: torch.Tensor, dtype: str) -> dict[str, torch.Tensor]:
    if _quantizes(name, tuple(tensor.shape), dtype):
        q, scale = quantize_per_channel(tensor)
        return {name: q, name + SCALE_SUFFIX: scale}
    return {name: tensor.detach().to(torch.float32 if dtype == "fp32" else torch.float16)}


def write_compact(tensors: Iterable[tuple[str, torch.Tensor]], shapes: list[tuple[str, tuple[int, ...]]],
                  path: Path, dtype: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``tensors`` (float, any dtype) to ``path`` in the compact ``dtype``, one tensor in memory at a time.

    Args:
        tensors: ``(name, tensor)`` pairs; produced lazily, in any order.
        shapes: ``(name, shape)`` of every tensor ``tensors`` yields (the header is written first).
        path: Destination (written whole; the caller's cache folder makes it atomic).
        dtype: ``fp32`` or ``int8``.
        metadata: Extra string metadata for the header.

    Returns:
        Sizes: ``{"bytes": file size, "tensors": count, "int8_tensors": count}``.
    """
    check_dtype(dtype)
    entries = [entry for name, shape in shapes for entry in _entries(name, tuple(shape), dtype)]
    entries.sort(key=lambda e: -_SIZES[e[1]])  # fp32, fp16, int8: each tensor aligned for its dtype
    header: dict[str, Any] = {"__metadata__": {"format": "edgediff-torch-compact", "version": str(COMPACT_FORMAT),
                                               "dtype": dtype, **(metadata or {})}}
    offset = 0
    for name, st_dtype, shape in entries:
        size = _SIZES[st_dtype]
        for n in shape:
            size *= n
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-(8 + len(raw))) % PAGE)  # JSON may end in spaces: the data then starts on a page boundary
    positions = {name: header[name]["data_offsets"][0] for name, _, _ in entries}
    data_start = 8 + len(raw)
    written: set[str] = set()
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(data_start + offset)
        for name, tensor in tensors:
            for entry, value in _convert(name, tensor, dtype).items():
                meta = header.get(entry)
                if meta is None or list(value.shape) != meta["shape"]:
                    raise EdgediffError(f"compact weights: tensor {entry} was not announced with this shape")
                fh.seek(data_start + positions[entry])
                fh.write(value.contiguous().numpy().data)  # the tensor's own buffer: no copy
                written.add(entry)
        fh.flush()
        os.fsync(fh.fileno())
    missing = set(positions) - written
    if missing:
        raise EdgediffError(f"compact weights: {len(missing)} tensors were never written (e.g. {sorted(missing)[0]})")
    return {"bytes": data_start + offset, "tensors": len(entries),
            "int8_tensors": sum(1 for e in entries if e[1] == "I8")}


class CompactWeights:
    """A compact weights file mapped read-only; ``get`` materialises one tensor as fp32.

    Args:
        path: The file ``write_compact`` wrote.
        drop_pages: Drop the file pages a ``get`` touched from this process (see the module docstring).
    """

    def __init__(self, path: Path, *, drop_pages: bool = True) -> None:
        self.path = Path(path)
        self.drop_pages = drop_pages and hasattr(mmap, "MADV_DONTNEED")
        with self.path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata: dict[str, str] = header.pop("__metadata__", {})
        self._start = 8 + length
        self._entries: dict[str, dict[str, Any]] = header
        self._buffer = memoryview(self._map)

    @property
    def dtype(self) -> str:
        """The storage dtype (``int8`` or ``fp32``)."""
        return self.metadata.get("dtype", "")

    def names(self) -> list[str]:
        """Every stored model tensor (scales excluded)."""
        return [n for n in self._entries if not (n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in self._entries)]

    def _raw(self, name: str) -> tuple[torch.Tensor, int, int]:
        meta = self._entries[name]
        start, end = meta["data_offsets"]
        dtype = _TORCH_DTYPES[meta["dtype"]]
        count = (end - start) // _SIZES[meta["dtype"]]
        with warnings.catch_warnings():  # the mapping is read-only; the view is only read, then copied
            warnings.simplefilter("ignore", UserWarning)
            view = torch.frombuffer(self._buffer, dtype=dtype, count=count, offset=self._start + start)
        return view.reshape(meta["shape"]), self._start + start, self._start + end

    def quantized(self, name: str) -> bool:
        """Whether ``name`` is stored int8 (a convolution or linear weight, as opposed to norms, biases, codebook)."""
        return self._entries[name]["dtype"] == "I8"

    def get(self, name: str, out: torch.Tensor | None = None, *, dequantize: bool = True) -> torch.Tensor:
        """Tensor ``name`` as fp32 (dequantized when stored int8), or in ``out``'s dtype when given.

        Args:
            name: The tensor.
            out: A contiguous fp32 or bf16 tensor of its shape to write into (a reused buffer: no allocation, no page
                faults); None returns a new fp32 tensor.
            dequantize: False gives an int8 tensor's integers as they are (exact in fp32 and bf16), for a layer
                that applies ``scale(name)`` to its output instead (one pass over the weights, not two).

        Raises:
            KeyError: no such tensor.
        """
        raw, start, end = self._raw(name)
        ranges = [(start, end)]
        if out is None:
            out = torch.empty(raw.shape, dtype=torch.float32)
        out.copy_(raw)
        if raw.dtype == torch.int8 and dequantize:
            scale, s_start, s_end = self._raw(name + SCALE_SUFFIX)
            ranges.append((s_start, s_end))
            out.mul_(scale.reshape(-1, *([1] * (raw.dim() - 1))).to(out.dtype))
        del raw
        if self.drop_pages:
            for begin, finish in ranges:
                self._drop(begin, finish)
        return out

    def scale(self, name: str) -> torch.Tensor:
        """The fp32 per-output-channel scale of the int8 tensor ``name`` (a copy)."""
        scale, _, _ = self._raw(name + SCALE_SUFFIX)
        return scale.clone()

    def _drop(self, start: int, end: int) -> None:
        start, end = max(0, start - FAULT_AROUND_BYTES), end + FAULT_AROUND_BYTES  # the kernel maps neighbours too
        begin = start - start % PAGE
        length = min(len(self._map), end + (-end) % PAGE) - begin
        if length > 0:
            self._map.madvise(mmap.MADV_DONTNEED, begin, length)

    def close(self) -> None:
        """Unmap the file (tensors ``get`` returned stay valid: they are copies)."""
        self._buffer.release()
        self._map.close()


# --- preparing the file once per model (content-hashed cache) ----------------------------------------------------

def _kind(preset_name: str, dtype: str) -> str:
    return f"{preset_name}-torch-compact-{dtype}"


def _extra(dtype: str) -> dict[str, Any]:
    return {"format": COMPACT_FORMAT, "dtype": dtype, "keep_float": list(KEEP_FLOAT),
            "int8_min_elements": INT8_MIN_ELEMENTS}


def _in_file(name: str) -> bool:
    """Whether the model tensor ``<part>.<name>`` goes into the file (the VQ encoder does not)."""
    return name.startswith("unet.") or name.removeprefix("vqvae.").startswith(VQVAE_PREFIXES)


def build_compact(model: ModelSpec, dtype: str, *,
                  classes: tuple[Any, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Build (or find in the cache) the compact weights of ``model``; returns ``(folder, report)``.

    Streams the model's tensors one at a time (``edgediff.artifacts.weight_stream``) from its weights folder or its
    synthetic generator: the fp32 model is never built (``model``'s modules are not used), so this fits in the
    low-memory variant's own budget. The folder holds ``FILENAME`` and the model's ``spec.json``.

    Args:
        model: The model (``describe_model`` is enough).
        dtype: ``fp32`` or ``int8``.
        classes: ``(UNet2DModel, VQModel)`` to build the meta skeletons with (None: diffusers' own import).
    """
    check_dtype(dtype)

    def build(folder: Path) -> dict[str, Any]:
        stream = model_stream(model, keep=_in_file, classes=classes)
        report = write_compact(stream.tensors(), stream.shapes, folder / FILENAME, dtype,
                               metadata={"preset": model.preset.name, "fingerprint": model.fingerprint()})
        model.save(folder)
        return report

    return cached_build(model.fingerprint(), _kind(model.preset.name, dtype), build, extra=_extra(dtype))


def find_compact(fingerprint: str, preset_name: str, dtype: str) -> tuple[Path, dict[str, Any], ModelSpec] | None:
    """The cached compact weights of the model with ``fingerprint``: ``(file, report, spec)``, or None."""
    found = find_cached(fingerprint, _kind(preset_name, check_dtype(dtype)), extra=_extra(dtype))
    if found is None:
        return None
    folder, report = found
    return folder / FILENAME, report, ModelSpec.load(folder)
