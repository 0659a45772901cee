"""Model presets: the architecture (diffusers constructor keywords) of each model edgediff knows.

A preset's three configs are the single source of truth that the pipeline, the exporters, the Triton models and
the reports read. ``celebahq-256`` is exactly the study's model (CompVis/ldm-celebahq-256); its config files are
carried in ``edgediff/models/configs/celebahq-256/``, copied from the diffusers checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.errors import UnknownPresetError

CONFIG_ROOT = Path(__file__).parent / "configs"
BUNDLED_WEIGHTS_ROOT = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelPreset:
    """One model: its UNet, VQ autoencoder and scheduler configs.

    Attributes:
        name: Preset name used on the command line (``celebahq-256``, ``tiny``, ``digits``).
        description: One line for ``--help`` and reports.
        unet_config: ``diffusers.UNet2DModel`` keyword arguments.
        vqvae_config: ``diffusers.VQModel`` keyword arguments.
        scheduler_config: ``diffusers.DDIMScheduler`` keyword arguments.
        default_steps: DDIM steps when the user gives none.
        bundled_weights: A diffusers-format folder shipped with the package (trained presets), else None.
    """

    name: str
    description: str
    unet_config: dict[str, Any]
    vqvae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    default_steps: int = 20
    bundled_weights: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the UNet's input latents."""
        size = self.unet_config["sample_size"]
        return (self.unet_config["in_channels"], size, size)

    @property
    def image_size(self) -> int:
        """Side of the decoded square image in pixels."""
        factor = 2 ** (len(self.vqvae_config["block_out_channels"]) - 1)
        return self.unet_config["sample_size"] * factor

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, written into manifests and reports."""
        return {
            "name": self.name,
            "unet": self.unet_config,
            "vqvae": self.vqvae_config,
            "scheduler": self.scheduler_config,
            "latent_shape": list(self.latent_shape),
            "image_size": self.image_size,
        }


def _read_config(path: Path) -> dict[str, Any]:
    """Read a diffusers config.json, dropping the private ``_class_name``-style keys."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def normalize_scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    """Map an old diffusers scheduler config onto ``DDIMScheduler`` keywords.

    The 2022 checkpoints say ``timesteps`` where diffusers now says ``num_train_timesteps``; ``timestep_values`` and
    ``trained_betas: null`` carry no information.
    """
    out = {k: v for k, v in config.items() if not k.startswith("_")}
    if "timesteps" in out:
        out.setdefault("num_train_timesteps", out.pop("timesteps"))
    out.pop("timestep_values", None)
    if out.get("trained_betas") is None:
        out.pop("trained_betas", None)
    return out


def _celebahq_256() -> ModelPreset:
    root = CONFIG_ROOT / "celebahq-256"
    return ModelPreset(
        name="celebahq-256",
        description="The study's model: CompVis/ldm-celebahq-256 (UNet 274M + VQ-f4 decoder), 256x256 faces",
        unet_config=_read_config(root / "unet" / "config.json"),
        vqvae_config=_read_config(root / "vqvae" / "config.json"),
        scheduler_config=normalize_scheduler_config(_read_config(root / "scheduler" / "scheduler_config.json")),
        default_steps=20,
    )


def _tiny() -> ModelPreset:
    return ModelPreset(
        name="tiny",
        description="Same architecture family, a few hundred thousand parameters, 64x64 images: for tests",
        unet_config={
            "sample_size": 16,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [32, 32],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
            "act_fn": "silu",
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "time_embedding_type": "positional",
        },
        vqvae_config={
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [16, 16, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "layers_per_block": 1,
            "latent_channels": 3,
            "num_vq_embeddings": 64,
            "norm_num_groups": 8,
            "sample_size": 64,
            "act_fn": "silu",
        },
        scheduler_config=_celebahq_256().scheduler_config,
        default_steps=10,
    )


def _digits() -> ModelPreset | None:
    """The trained reference model (see ``edgediff train-reference``), present once its weights are committed."""
    root = BUNDLED_WEIGHTS_ROOT / "digits"
    if not (root / "unet" / "config.json").is_file():
        return None
    return ModelPreset(
        name="digits",
        description="Small LDM trained by edgediff on scikit-learn's digits (32x32): real weights for quality gates",
        unet_config=_read_config(root / "unet" / "config.json"),
        vqvae_config=_read_config(root / "vqvae" / "config.json"),
        scheduler_config=normalize_scheduler_config(_read_config(root / "scheduler" / "scheduler_config.json")),
        default_steps=20,
        bundled_weights=root,
    )


def list_presets() -> list[str]:
    """Names of the presets available in this installation."""
    return list(_all_presets())


def _all_presets() -> dict[str, ModelPreset]:
    presets = {p.name: p for p in (_celebahq_256(), _tiny(), _digits()) if p is not None}
    return presets


def get_preset(name: str) -> ModelPreset:
    """Return the preset called ``name``.

    Raises:
        UnknownPresetError: when no preset has that name; the message lists the known ones.
    """
    presets = _all_presets()
    if name not in presets:
        raise UnknownPresetError(f"--model: unknown model preset {name!r}; choose one of {', '.join(presets)}")
    return presets[name]
