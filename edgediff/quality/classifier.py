"""The digits classifier: a small CNN trained on the reference dataset's train split, used to score generated images.

Its softmax gives the confident share (images classified with probability >= 0.9) and its penultimate layer gives the
features of the digits-FD. The committed weights (``assets/digits_classifier.safetensors``) are reproduced by
``edgediff train-reference``; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgediff.errors import WeightsError
from edgediff.io import atomic_write_bytes, atomic_write_json
from edgediff.quality.dataset import IMAGE_SIZE, NUM_CLASSES, DigitsSplit, minibatches

ASSETS_DIR = Path(__file__).parent / "assets"
CLASSIFIER_FILE = ASSETS_DIR / "digits_classifier.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the classifier.

    Attributes:
        width: Channels of the first convolutions (doubled after the first pooling).
        feature_dim: Size of the penultimate layer, i.e. of the digits-FD feature vector.
    """

    width: int = 32
    feature_dim: int = 64


class DigitsClassifier(nn.Module):
    """Four 3x3 convolutions with three 2x2 poolings (32 -> 4 pixels), a feature layer and a 10-way head.

    Input: grey images ``[N, 1, 32, 32]`` in [-1, 1] (as ``dataset.DigitsSplit.images``).
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        w = self.config.width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (IMAGE_SIZE // 8) ** 2, self.config.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.config.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[N, feature_dim]`` (the digits-FD features)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, 10]``."""
        return self.head(self.body(x))


def images_to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` images (C = 1 or 3; any size) -> the classifier's ``[N, 1, 32, 32]`` in [-1, 1].

    Colour is averaged to grey; other sizes are resized bilinearly (with antialiasing) to 32x32.
    """
    array = np.asarray(images)
    if array.ndim != 4 or array.dtype != np.uint8 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, H, W, 1|3], got {array.dtype} {list(array.shape)}")
    x = torch.from_numpy(array).float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True,
                                      align_corners=False)
    return x.contiguous()


@dataclass(frozen=True)
class ClassifierOutput:
    """The classifier's view of a set of images.

    Attributes:
        probs: Softmax probabilities ``[N, 10]``.
        features: Penultimate features ``[N, feature_dim]`` (float64).
    """

    probs: np.ndarray
    features: np.ndarray


@torch.inference_mode()
def classify(model: DigitsClassifier, images: np.ndarray, batch: int = 256) -> ClassifierOutput:
    """Run the classifier over uint8 NHWC images in batches."""
    x = images_to_input(images)
    probs, feats = [], []
    for start in range(0, x.shape[0], batch):
        f = model.features(x[start:start + batch])
        probs.append(torch.softmax(model.head(f), dim=1))
        feats.append(f)
    return ClassifierOutput(probs=torch.cat(probs).double().numpy(), features=torch.cat(feats).double().numpy())


def train_classifier(
    train: DigitsSplit,
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_shift_px: int = 2,
    config: ClassifierConfig | None = None,
) -> tuple[DigitsClassifier, list[float]]:
    """Train a classifier with AdamW and random shifts of up to ``max_shift_px`` pixels (deterministic given seed).

    Returns:
        The model in eval mode, and the mean loss of each tenth of the run.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    losses: list[float] = []
    model.train()
    for _step, idx in zip(range(steps), minibatches(len(train), batch_size, generator), strict=False):
        x = random_shift(train.images[idx], max_shift_px, generator)
        loss = nn.functional.cross_entropy(model(x), train.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval().requires_grad_(False), losses


def random_shift(x: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_px`` pixels (background -1 fills the border)."""
    if max_px <= 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_px,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_px + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def accuracy(model: DigitsClassifier, split: DigitsSplit) -> float:
    """Share of ``split`` classified correctly (0..1), from the same uint8 images the pipeline would produce."""
    probs = classify(model, split.uint8_nhwc()).probs
    return float((probs.argmax(axis=1) == split.labels.numpy()).mean())


def save_classifier(model: DigitsClassifier, weights_file: str | os.PathLike[str],
                    info: dict[str, Any] | None = None) -> None:
    """Write the weights (safetensors) and a JSON of config + ``info`` beside them (``.json``), atomically."""
    from safetensors.torch import save


    path = Path(weights_file)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"format": "pt"}))
    atomic_write_json(path.with_suffix(".json"), {"config": asdict(model.config), **(info or {})})


def load_classifier(weights_file: str | os.PathLike[str] | None = None) -> DigitsClassifier:
    """Load a classifier (default: the committed one).

    Raises:
        WeightsError: the file or its JSON is missing or does not fit the architecture.
    """
    if weights_file is None:
        return _committed_classifier()
    return _load(Path(weights_file))


@lru_cache(maxsize=1)
def _committed_classifier() -> DigitsClassifier:
    return _load(CLASSIFIER_FILE)


def _load(path: Path) -> DigitsClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path = path.with_suffix(".json")
    if not path.is_file() or not config_path.is_file():
        raise WeightsError(f"digits classifier: missing {path} or {config_path}; run 'edgediff train-reference'")
    try:
        config = ClassifierConfig(**json.loads(config_path.read_text(encoding="utf-8"))["config"])
        model = DigitsClassifier(config)
        model.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"digits classifier: cannot load {path}: {exc}") from exc
    return model.eval().requires_grad_(False)
