"""Build a preset's modules and fill them with weights: from a diffusers-format folder, or seeded synthetic ones.

A weights folder has the diffusers layout::

    DIR/unet/config.json        DIR/unet/diffusion_pytorch_model.safetensors   (or .bin)
    DIR/vqvae/config.json       DIR/vqvae/diffusion_pytorch_model.safetensors   (or .bin)
    DIR/scheduler/scheduler_config.json

No model hub is ever contacted. Without a folder the architecture is built with deterministic synthetic weights
(``torch.manual_seed(seed)`` around the default initialisers), and every output says ``weights: synthetic``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgediff.constants import ENV_WEIGHTS
from edgediff.errors import WeightsError
from edgediff.io import file_sha256
from edgediff.models.presets import ModelPreset, normalize_scheduler_config

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SYNTHETIC_WARNING = (
    "WARNING: weights: synthetic - no weights folder given, so the {preset} architecture runs with seeded random "
    "weights. Latency and memory are real; the images are noise. Pass --weights DIR (or set EDGEDIFF_WEIGHTS)."
)
# Architecture keys whose value in a weights folder must equal the preset's.
_ARCH_KEYS = {
    "unet": ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
             "layers_per_block", "attention_head_dim"),
    "vqvae": ("in_channels", "out_channels", "block_out_channels", "latent_channels", "num_vq_embeddings",
              "layers_per_block"),
}


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a model's weights came from; written into PNG metadata, manifests and reports.

    Attributes:
        kind: ``"synthetic"``, ``"directory"`` (user folder) or ``"bundled"`` (shipped with edgediff).
        path: The folder, or None for synthetic weights.
        sha256: Hash over the weight files' bytes (folders) or over preset + seed (synthetic).
        seed: The seed of synthetic weights, else None.
    """

    kind: str
    path: str | None
    sha256: str
    seed: int | None = None

    @property
    def synthetic(self) -> bool:
        """True when the weights are seeded random numbers, not a trained model."""
        return self.kind == "synthetic"

    def label(self) -> str:
        """Short human label: ``synthetic (seed 0)`` or ``directory /path (sha256 ab12...)``."""
        if self.synthetic:
            return f"synthetic (seed {self.seed})"
        return f"{self.kind} {self.path} (sha256 {self.sha256[:12]})"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "seed": self.seed}


@dataclass(frozen=True)
class LDMModules:
    """A preset's torch modules with their weights, in eval mode on the CPU, fp32 (``ModelSpec.modules()``).

    Attributes:
        unet: ``diffusers.UNet2DModel``.
        vqvae: ``diffusers.VQModel`` (its ``decode`` is the image decoder).
    """

    unet: Any
    vqvae: Any


def model_fingerprint(preset: ModelPreset, weights: WeightsOrigin) -> str:
    """Content hash of architecture + weights (``ModelSpec.fingerprint``): the cache key base for artifacts."""
    payload = json.dumps({"preset": preset.to_dict(), "weights": weights.sha256}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def weights_origin(
    preset: ModelPreset, weights: str | os.PathLike[str] | None = None, *, seed: int = 0
) -> WeightsOrigin:
    """Where the weights come from and their digest, without building or loading any module.

    The one place a model's weights are identified: ``load_modules`` reports what this returns. Hashes the weight
    files of a folder (read in chunks: the page cache, not this process, holds their bytes). The folder's configs and
    tensors are not validated here: ``load_modules`` does that when the model is loaded.

    Raises:
        WeightsError: the folder is not a directory or lacks a weight file.
    """
    folder = resolve_weights_dir(weights, preset)
    if folder is None:
        digest = hashlib.sha256(f"{preset.name}:synthetic:{seed}".encode()).hexdigest()
        return WeightsOrigin(kind="synthetic", path=None, sha256=digest, seed=seed)
    if not folder.is_dir():
        raise WeightsError(f"--weights: {folder} is not a directory")
    hashes = []
    for sub in ("unet", "vqvae"):
        weight_file = next((folder / sub / name for name in WEIGHT_FILES if (folder / sub / name).is_file()), None)
        if weight_file is None:
            raise WeightsError(f"--weights: missing {folder / sub}/{WEIGHT_FILES[0]} (or .bin)")
        hashes.append(file_sha256(weight_file))
    kind = "bundled" if preset.bundled_weights is not None and folder == preset.bundled_weights else "directory"
    return WeightsOrigin(kind=kind, path=str(folder), sha256=hashlib.sha256("".join(hashes).encode()).hexdigest())


VQMODEL_SCALING_FACTOR = 0.18215
"""``diffusers.VQModel``'s default ``scaling_factor``: what a VQ config that omits it gets (checked by the tests)."""


def read_configs(preset: ModelPreset, folder: Path | None) -> tuple[dict[str, Any], float]:
    """The scheduler config and latent scaling factor that ``load_modules`` reports, from the JSON configs alone.

    Builds no module (the fp32 celebahq-256 model is about 1.3 GB; importing ``diffusers.VQModel`` alone about 80 MB).

    Args:
        preset: The architecture.
        folder: The weights folder, or None for synthetic weights (the preset's configs).

    Raises:
        WeightsError: the folder's scheduler or VQ config is missing or unreadable.
    """
    if folder is None:
        return dict(preset.scheduler_config), float(preset.vqvae_config.get("scaling_factor", VQMODEL_SCALING_FACTOR))
    path = folder / "vqvae" / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"--weights: cannot read {path}: {exc}") from exc
    return _load_scheduler_config(folder, preset), float(config.get("scaling_factor", VQMODEL_SCALING_FACTOR))


def resolve_weights_dir(weights: str | os.PathLike[str] | None, preset: ModelPreset) -> Path | None:
    """The weights folder to use: the argument, else ``$EDGEDIFF_WEIGHTS``, else the preset's bundled folder."""
    if weights:
        return Path(weights)
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        return Path(env)
    return preset.bundled_weights


def load_modules(
    preset: ModelPreset,
    weights: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    warn: bool = True,
) -> tuple[LDMModules, dict[str, Any], WeightsOrigin]:
    """Build the preset's UNet and VQ model and load their weights (``ModelSpec`` calls this; use that).

    Args:
        preset: The architecture.
        weights: A diffusers-format folder; None means ``$EDGEDIFF_WEIGHTS``, the preset's bundled weights, or
            synthetic weights, in that order.
        seed: Seed of the synthetic weights.
        warn: Log the loud synthetic-weights warning.

    Returns:
        ``(modules, scheduler config, weights origin)``.

    Raises:
        WeightsError: a file is missing, a config does not match the preset, or a tensor does not fit.
    """
    from diffusers import UNet2DModel, VQModel

    origin = weights_origin(preset, weights, seed=seed)
    if origin.path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DModel(**preset.unet_config)
            vqvae = VQModel(**preset.vqvae_config)
        if warn:
            logger.warning(SYNTHETIC_WARNING.format(preset=preset.name))
        scheduler_config = dict(preset.scheduler_config)
    else:
        folder = Path(origin.path)
        unet = load_module(UNet2DModel, folder, "unet", preset.unet_config)
        vqvae = load_module(VQModel, folder, "vqvae", preset.vqvae_config)
        scheduler_config = _load_scheduler_config(folder, preset)
    unet.eval().requires_grad_(False)
    vqvae.eval().requires_grad_(False)
    return LDMModules(unet=unet, vqvae=vqvae), scheduler_config, origin


def load_submodel(preset: ModelPreset, folder: Path, sub: str) -> Any:
    """One module of the preset, ``sub`` = ``unet`` or ``vqvae``, loaded alone from ``folder/sub``.

    Checked as ``load_modules`` checks it; eval mode, CPU, fp32. For a process that serves one part and must not
    hold the other.
    """
    from diffusers import UNet2DModel, VQModel

    classes = {"unet": (UNet2DModel, preset.unet_config), "vqvae": (VQModel, preset.vqvae_config)}
    if sub not in classes:
        raise ValueError(f"sub must be unet or vqvae, got {sub!r}")
    cls, config = classes[sub]
    return load_module(cls, Path(folder), sub, config).eval().requires_grad_(False)


def load_module(cls: Any, folder: Path, sub: str, expected: dict[str, Any]) -> Any:
    """Load ``folder/sub`` with ``cls.from_pretrained`` (local files only) after checking files and config."""
    sub_dir = folder / sub
    if not folder.is_dir():
        raise WeightsError(f"--weights: {folder} is not a directory")
    config_path = sub_dir / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"--weights: missing {config_path} (expected the diffusers layout unet/ vqvae/ scheduler/)")
    weight_file = next((sub_dir / name for name in WEIGHT_FILES if (sub_dir / name).is_file()), None)
    if weight_file is None:
        raise WeightsError(f"--weights: missing {sub_dir}/{WEIGHT_FILES[0]} (or .bin)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"--weights: cannot read {config_path}: {exc}") from exc
    for key in _ARCH_KEYS[sub]:
        if key in expected and key in config and _norm(config[key]) != _norm(expected[key]):
            raise WeightsError(
                f"--weights: {config_path}: {key} is {config[key]!r}, but the preset expects {expected[key]!r}"
            )
    _check_tensors(cls, expected, weight_file)
    try:
        module = cls.from_pretrained(sub_dir, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types; the user needs the message, not the type
        raise WeightsError(f"--weights: cannot load {sub_dir}: {exc}") from exc
    module = module.float()
    # from_pretrained leaves tensors as views into the (mmap'ed) file, unaligned for SIMD kernels: results then differ
    # in the last bits from a model built in memory. Own, aligned copies make loading exact and pages anonymous.
    for tensor in (*module.parameters(), *module.buffers()):
        tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
    return module


def _check_tensors(cls: Any, config: dict[str, Any], weight_file: Path) -> None:
    """Compare the file's tensor names and shapes with the architecture; name the first mismatch."""
    if weight_file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weight_file), framework="pt") as fh:
                shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"--weights: {weight_file} is not a valid safetensors file: {exc}") from exc
    else:
        try:
            state = torch.load(weight_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"--weights: {weight_file} is not a valid PyTorch checkpoint: {exc}") from exc
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    with torch.device("meta"):
        reference = {k: tuple(v.shape) for k, v in cls(**config).state_dict().items()}
    for name, shape in reference.items():
        if name in shapes and shapes[name] != shape:
            raise WeightsError(
                f"--weights: tensor {name} in {weight_file} has shape {list(shapes[name])}, "
                f"the architecture needs {list(shape)}"
            )
    # Old checkpoints name attention weights query/key/value/proj_attn; diffusers converts those on load.
    legacy = any(k.endswith((".query.weight", ".proj_attn.weight")) for k in shapes)
    if not legacy:
        missing = [k for k in reference if k not in shapes]
        if missing:
            raise WeightsError(f"--weights: tensor {missing[0]} is missing from {weight_file} ({len(missing)} missing)")


def _load_scheduler_config(folder: Path, preset: ModelPreset) -> dict[str, Any]:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise WeightsError(f"--weights: missing {path}")
    try:
        config = normalize_scheduler_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"--weights: cannot read {path}: {exc}") from exc
    return {**preset.scheduler_config, **config}


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
