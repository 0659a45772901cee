"""Test doubles of the gateway: a backend whose health a test flips, and whose generations take ``work_s``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edgediff.pipeline import GenerationCancelled
from services.gateway.backends.base import (
    Backend,
    BackendResult,
    BackendUnavailableError,
    GenerateArgs,
    VariantStatus,
    public_weights_label,
)

VARIANT = "torch-fp32"


class FlakyBackend(Backend):
    """A backend the test takes down and brings back; ``generate`` takes ``work_s`` and fails if it goes down."""

    name = "fake"

    def __init__(self, work_s: float = 0.3) -> None:
        super().__init__()
        self.up = threading.Event()
        self.up.set()
        self.work_s = work_s
        self.unsent_failures = 0
        self.started: list[int] = []
        self.finished: list[int] = []

    def set_up(self, up: bool) -> None:
        (self.up.set if up else self.up.clear)()
        self._notify_health(up)

    def model_name(self) -> str:
        return "tiny"

    def known_variants(self) -> list[str]:
        return [VARIANT]

    def variant_status(self, name: str) -> VariantStatus:
        if not self.up.is_set():
            raise BackendUnavailableError("fake backend is down", started=False)
        return VariantStatus(name=name, available=True)

    def default_variant(self) -> str:
        return VARIANT

    def healthy(self) -> bool:
        return self.up.is_set()

    def unavailable_reason(self) -> str:
        return "" if self.up.is_set() else "fake backend is down"

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        if self.unsent_failures > 0:
            self.unsent_failures -= 1
            raise BackendUnavailableError("connection refused before sending", started=False)
        if not self.up.is_set():
            raise BackendUnavailableError("fake backend is down", started=False)
        self.started.append(args.seed)
        t_end = time.monotonic() + self.work_s
        while time.monotonic() < t_end:
            if not self.up.is_set():
                raise BackendUnavailableError("fake backend died mid-generation")  # started work fails
            if should_stop():
                raise GenerationCancelled("stopped")
            time.sleep(0.01)
        self.finished.append(args.seed)
        return BackendResult(images=[b"png"] * args.batch, denoise_s=self.work_s, decode_s=0.0, total_s=self.work_s,
                             weights_origin=public_weights_label("tiny", "synthetic", "ab" * 32, seed=0),
                             model="tiny")
