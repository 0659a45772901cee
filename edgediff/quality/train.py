"""Train the ``digits`` reference model: a small VQ autoencoder, a small UNet on its latents, and the classifier.

The model is of the study's family (``VQModel`` + ``UNet2DModel`` with ``DownBlock2D``/``AttnDownBlock2D`` blocks,
epsilon prediction, the celebahq scaled-linear betas, DDIM sampling), only small enough to train on two CPU cores in
minutes. The recipe:

1. classifier: ``classifier.train_classifier`` on the train split (independent of the rest);
2. autoencoder: ``vq_steps`` steps of reconstruction (MSE). The first ``1 - vq_quantize_fraction`` of them skip the
   codebook; then the codebook is initialised by k-means on the encoder's latents and training goes on through the
   quantizer with its commitment loss (``VQModel.forward`` returns it). This avoids a collapsed codebook;
3. ``scaling_factor = 1 / std`` of the train latents, recorded in the VQ config, so that ``latents / scaling_factor``
   is what the decoder expects (diffusers' LDMPipeline divides by it before ``decode``);
4. UNet: epsilon prediction on ``encode(x).latents * scaling_factor`` with noise added by ``DDPMScheduler.add_noise``
   (the same betas as the DDIM sampler), AdamW, cosine schedule with warm-up, and an EMA of the weights (saved).

Everything is deterministic given the seed on a given machine and torch build: fixed threads, deterministic
algorithms, seeded generators for data order, noise and timesteps. (Floating-point kernels may differ between CPU
models, so bit-identical weights are only promised on the same kind of machine.)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgediff.errors import InvalidArgumentError
from edgediff.io import atomic_write_bytes, atomic_write_json, file_sha256
from edgediff.models import load_components
from edgediff.models.presets import BUNDLED_WEIGHTS_ROOT, ModelPreset, _read_config, normalize_scheduler_config
from edgediff.quality.classifier import CLASSIFIER_FILE, accuracy, save_classifier, train_classifier
from edgediff.quality.dataset import DigitsSplit, load_split, minibatches
from edgediff.quality.gate import evaluate
from edgediff.quality.samples import sample_images
from edgediff.variants import BASELINE, BuildOptions, build_variant

logger = logging.getLogger(__name__)

DIGITS_VQVAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "latent_channels": 3,
    "num_vq_embeddings": 256,
    "norm_num_groups": 16,
    "sample_size": 32,
    "act_fn": "silu",
}
"""VQ-f4 like celebahq's (three blocks, 3 latent channels), 32x32 images -> 8x8x3 latents, 256 codes."""

DIGITS_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [64, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
}
"""celebahq's block types and time embedding, two levels instead of four."""

DIGITS_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
}
"""celebahq's scheduler settings (scaled-linear betas 0.0015..0.0195, 1000 steps, no clipping)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every number of the recipe; the defaults reproduce the committed ``digits`` weights.

    Attributes:
        seed: Seeds every generator (weights, data order, noise, timesteps).
        threads: torch intra-op threads (fixed, so that the arithmetic is the same on every run).
        classifier_steps: Optimizer steps of the classifier (0 skips it).
        vq_steps: Optimizer steps of the autoencoder.
        vq_quantize_fraction: The last fraction of ``vq_steps`` that trains through the codebook.
        unet_steps: Optimizer steps of the UNet.
        eval_samples: Images generated at the end to score the model (0 skips the evaluation).
        eval_steps: DDIM steps of those images.
    """

    seed: int = 0
    threads: int = 2
    classifier_steps: int = 600
    classifier_batch_size: int = 64
    classifier_lr: float = 2e-3
    vq_steps: int = 800
    vq_quantize_fraction: float = 0.5
    vq_batch_size: int = 32
    vq_lr: float = 1e-3
    kmeans_iterations: int = 20
    unet_steps: int = 2000
    unet_batch_size: int = 128
    unet_lr: float = 1e-3
    unet_warmup_steps: int = 100
    ema_decay: float = 0.999
    eval_samples: int = 64
    eval_steps: int = 20
    vqvae: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DIGITS_VQVAE_CONFIG))
    unet: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DIGITS_UNET_CONFIG))
    scheduler: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DIGITS_SCHEDULER_CONFIG))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (written into ``training.json``)."""
        return asdict(self)


@dataclass
class TrainingSummary:
    """What a training run produced.

    Attributes:
        out_dir: The finished folder (diffusers layout plus ``classifier/`` and ``training.json``).
        record: The content of ``training.json``: config, losses, timings, scores, file hashes.
    """

    out_dir: Path
    record: dict[str, Any]


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Fixed threads and deterministic algorithms for the duration; the previous settings come back afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def _curve(losses: list[float], points: int = 10) -> list[float]:
    """Mean loss of each of ``points`` equal chunks of the run (a short loss curve for the record)."""
    if not losses:
        return []
    chunk = max(1, len(losses) // points)
    return [round(sum(losses[i:i + chunk]) / len(losses[i:i + chunk]), 6) for i in range(0, len(losses), chunk)]


def _final(losses: list[float]) -> float | None:
    """Mean of the last tenth of the losses (a less noisy 'final loss')."""
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on ``points [N, D]``, started from ``k`` distinct random points; returns ``[k, D]`` centres.

    A centre that loses all its points keeps its previous position.
    """
    centres = points[torch.randperm(points.shape[0], generator=generator)[:k]].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def train_vqvae(config: TrainConfig, train: DigitsSplit, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """Train the autoencoder (see the module docstring); returns the model in eval mode and its record."""
    from diffusers import VQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        vq = VQModel(**config.vqvae)
    generator = torch.Generator().manual_seed(config.seed + 1)
    images = train.rgb()
    optimizer = torch.optim.AdamW(vq.parameters(), lr=config.vq_lr, weight_decay=0.0)
    quantize_from = round(config.vq_steps * (1.0 - config.vq_quantize_fraction))
    recon_losses: list[float] = []
    commit_losses: list[float] = []
    vq.train()
    batches = minibatches(len(train), config.vq_batch_size, generator)
    for step in range(config.vq_steps):
        if step == quantize_from:
            _init_codebook(vq, images, config, generator)
        x = images[next(batches)]
        if step < quantize_from:
            recon = vq.decode(vq.encode(x).latents, force_not_quantize=True).sample
            commit = torch.zeros(())
        else:
            out = vq(x)
            recon, commit = out.sample, out.commit_loss.mean()
        recon_loss = torch.nn.functional.mse_loss(recon, x)
        loss = recon_loss + commit
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recon_losses.append(recon_loss.item())
        commit_losses.append(commit.item())
        if (step + 1) % max(1, config.vq_steps // 4) == 0:
            log(f"vqvae step {step + 1}/{config.vq_steps}: reconstruction {recon_loss.item():.5f}, "
                f"commitment {commit.item():.5f}")
    if quantize_from >= config.vq_steps:  # very short runs: still leave a usable codebook
        _init_codebook(vq, images, config, generator)
    vq.eval().requires_grad_(False)
    record = {
        "steps": config.vq_steps,
        "quantize_from_step": quantize_from,
        "reconstruction_loss_curve": _curve(recon_losses),
        "commitment_loss_curve": _curve(commit_losses[quantize_from:]),
        "final_reconstruction_mse": _final(recon_losses),
        "final_commitment_loss": _final(commit_losses[quantize_from:]),
    }
    return vq, record


@torch.no_grad()
def _init_codebook(vq: Any, images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> None:
    latents = encode_latents(vq, images)
    points = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    k = vq.quantize.embedding.weight.shape[0]
    vq.quantize.embedding.weight.copy_(kmeans(points, k, config.kmeans_iterations, generator))


@torch.no_grad()
def encode_latents(vq: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``vq.encode(images).latents`` (before quantization, unscaled), in batches."""
    was_training = vq.training
    vq.eval()
    out = torch.cat([vq.encode(images[i:i + batch]).latents for i in range(0, images.shape[0], batch)])
    vq.train(was_training)
    return out


@torch.no_grad()
def reconstruction_report(vq: Any, split: DigitsSplit) -> dict[str, float]:
    """Held-out reconstruction MSE through the codebook (as the pipeline decodes) and the share of codes in use."""
    images = split.rgb()
    latents = encode_latents(vq, images)
    recon = vq.decode(latents).sample
    points = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    used = torch.cdist(points, vq.quantize.embedding.weight).argmin(dim=1).unique().numel()
    return {"test_reconstruction_mse": float(torch.nn.functional.mse_loss(recon, images)),
            "codes_used": int(used), "codes_total": int(vq.quantize.embedding.weight.shape[0])}


def train_unet(
    config: TrainConfig, latents: torch.Tensor, log: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """Train the UNet to predict the noise added to scaled latents; returns the EMA model (eval mode) and a record."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 2)
        unet = UNet2DModel(**config.unet)
    ema = copy.deepcopy(unet).requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed + 2)
    noise_scheduler = DDPMScheduler(**config.scheduler)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=0.0)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, min(config.unet_warmup_steps, config.unet_steps),
                                                  max(config.unet_steps, 1))
    losses: list[float] = []
    unet.train()
    batches = minibatches(latents.shape[0], config.unet_batch_size, generator)
    num_t = noise_scheduler.config.num_train_timesteps
    for step in range(config.unet_steps):
        z = latents[next(batches)]
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, num_t, (z.shape[0],), generator=generator)
        noisy = noise_scheduler.add_noise(z, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
        losses.append(loss.item())
        if (step + 1) % max(1, config.unet_steps // 10) == 0:
            log(f"unet step {step + 1}/{config.unet_steps}: loss {_final(losses[-100:]):.5f}")
    ema.eval()
    record = {"steps": config.unet_steps, "loss_curve": _curve(losses), "final_loss": _final(losses),
              "parameters": sum(p.numel() for p in ema.parameters())}
    return ema, record


def train_reference(
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "digits-reference",
    *,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> TrainingSummary:
    """Train the whole reference model and write it atomically (a temporary folder beside ``out_dir``, renamed).

    ``out_dir`` receives the diffusers layout (``unet/``, ``vqvae/``, ``scheduler/``: usable as ``--weights``),
    ``classifier/digits_classifier.safetensors`` (+ ``.json``) and ``training.json`` (config, losses, wall times,
    held-out scores, file hashes).

    Args:
        config: The recipe; defaults reproduce the committed weights.
        out_dir: Destination folder; must not exist unless ``overwrite``.
        overwrite: Replace an existing ``out_dir``.
        log: Progress lines (default: the module logger).
        command: The command line to record in ``training.json``.

    Raises:
        InvalidArgumentError: ``out_dir`` exists and ``overwrite`` is false, or a step count is negative.
    """
    config = config or TrainConfig()
    log = log or logger.info
    out = Path(out_dir)
    for name in ("classifier_steps", "vq_steps", "unet_steps", "eval_samples"):
        if getattr(config, name) < 0:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(f"--out: {out} already exists; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        record = _train_into(config, tmp, log, command)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainingSummary(out_dir=out, record=record)


def _train_into(config: TrainConfig, folder: Path, log: Callable[[str], None], command: str | None) -> dict[str, Any]:
    import diffusers


    t_start = time.perf_counter()
    wall: dict[str, float] = {}
    record: dict[str, Any] = {
        "command": command,
        "config": config.to_dict(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
        "machine": platform.machine(),
    }
    train, test = load_split()
    record["dataset"] = {"name": "sklearn.datasets.load_digits, bicubic 8x8 -> 32x32", "train": len(train),
                         "test": len(test)}
    with deterministic_torch(config.threads):
        t0 = time.perf_counter()
        classifier = None
        if config.classifier_steps > 0:
            classifier, losses = train_classifier(train, steps=config.classifier_steps, seed=config.seed,
                                                  batch_size=config.classifier_batch_size, lr=config.classifier_lr)
            test_acc = accuracy(classifier, test)
            record["classifier"] = {"steps": config.classifier_steps, "loss_curve": _curve(losses),
                                    "final_loss": _final(losses), "test_accuracy": test_acc}
            save_classifier(classifier, folder / "classifier" / "digits_classifier.safetensors",
                            {"test_accuracy": test_acc, "trained_by": "edgediff train-reference", "seed": config.seed,
                             "steps": config.classifier_steps})
            log(f"classifier: {config.classifier_steps} steps, held-out accuracy {test_acc:.4f}")
        wall["classifier_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        vq, record["vqvae"] = train_vqvae(config, train, log)
        latents = encode_latents(vq, train.rgb())
        std = float(latents.std())
        scaling_factor = 1.0 / std if std > 0 else 1.0
        vq.register_to_config(scaling_factor=scaling_factor)
        record["vqvae"].update(reconstruction_report(vq, test), latent_std=std, scaling_factor=scaling_factor)
        wall["vqvae_s"] = time.perf_counter() - t0
        log(f"vqvae: latent std {std:.4f} -> scaling_factor {scaling_factor:.4f}, held-out reconstruction MSE "
            f"{record['vqvae']['test_reconstruction_mse']:.5f}, codes used {record['vqvae']['codes_used']}")

        t0 = time.perf_counter()
        unet, record["unet"] = train_unet(config, latents * scaling_factor, log)
        wall["unet_s"] = time.perf_counter() - t0

        vq.save_pretrained(folder / "vqvae", safe_serialization=True)
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        scheduler = {"_class_name": "DDIMScheduler", **config.scheduler}
        atomic_write_json(folder / "scheduler" / "scheduler_config.json", scheduler)

        t0 = time.perf_counter()
        if config.eval_samples > 0:
            record["evaluation"] = _evaluate(config, folder, classifier, log)
        wall["evaluation_s"] = time.perf_counter() - t0
    wall["total_s"] = time.perf_counter() - t_start
    record["wall_s"] = {k: round(v, 2) for k, v in wall.items()}
    record["files"] = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    atomic_write_json(folder / "training.json", record)
    return record


def digits_preset_for(folder: Path) -> Any:
    """A ``digits`` preset whose configs come from ``folder`` (a weights folder that is not the committed one)."""
    return ModelPreset(
        name="digits",
        description="digits reference model from " + str(folder),
        unet_config=_read_config(folder / "unet" / "config.json"),
        vqvae_config=_read_config(folder / "vqvae" / "config.json"),
        scheduler_config=normalize_scheduler_config(_read_config(folder / "scheduler" / "scheduler_config.json")),
        default_steps=20,
    )


def _evaluate(config: TrainConfig, folder: Path, classifier: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Load what was just written, generate ``eval_samples`` images with torch-fp32 and score them."""
    components = load_components(digits_preset_for(folder), folder, warn=False)
    pipeline = build_variant(BASELINE, components, BuildOptions(threads=config.threads)).pipeline(components)
    images = sample_images(pipeline, samples=config.eval_samples, steps=config.eval_steps)
    scores = evaluate(images, classifier=classifier)
    log(f"evaluation: {config.eval_samples} samples, {config.eval_steps} DDIM steps: confident share "
        f"{scores.confident_share:.3f}, digits-FD {scores.digits_fd:.3f}")
    return {"samples": config.eval_samples, "steps": config.eval_steps, "scores": scores.to_dict()}


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed only after the rename.

    Permissions become those of an ordinary folder (temporary folders and atomic writes are private: 0700/0600).
    """
    for path in [src, *src.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def install_reference(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Copy a trained folder into the package; returns where each part went.

    The model goes to ``edgediff/models/weights/digits/`` (with its ``training.json``), the classifier to
    ``edgediff/quality/assets/``; each is replaced atomically.
    """
    src = Path(folder)
    model_dst = BUNDLED_WEIGHTS_ROOT / "digits"
    model_dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits.", suffix=".tmp", dir=model_dst.parent))
    try:
        for sub in ("unet", "vqvae", "scheduler"):
            shutil.copytree(src / sub, tmp / sub)
        shutil.copy2(src / "training.json", tmp / "training.json")
        _replace_dir(tmp, model_dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    classifier_src = src / "classifier" / CLASSIFIER_FILE.name
    if classifier_src.is_file():
        atomic_write_bytes(CLASSIFIER_FILE.with_suffix(".json"), classifier_src.with_suffix(".json").read_bytes())
        atomic_write_bytes(CLASSIFIER_FILE, classifier_src.read_bytes())
        for path in (CLASSIFIER_FILE, CLASSIFIER_FILE.with_suffix(".json")):
            path.chmod(0o644)
    return {"model": model_dst, "classifier": CLASSIFIER_FILE}


def committed_record() -> dict[str, Any] | None:
    """``training.json`` of the committed weights, if present."""
    path = BUNDLED_WEIGHTS_ROOT / "digits" / "training.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
