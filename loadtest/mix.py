"""The request mix of a load test: which variant, how many steps, images per call, eta and seed for each request.

Each dimension is a weighted list written ``value[:weight],...`` (``onnx-fp32:3,torch-fp32:1`` sends three ONNX
requests for one PyTorch request, on average); a bare value has weight 1. Seeds are ``random`` (uniform over
0..2**63-1), one seed ``N`` for every request, or a range ``A-B`` drawn uniformly. The ranges are the core's
(``edgediff.request``): a mix is checked with ``GenerationRequest.validated``, so it never draws a request the
gateway would refuse for its range (a server's ``--max-batch`` may still be lower than the core's 64). The same text
comes from the ``edgediff loadtest`` flags, the Locust options of ``locustfile.py`` or the ``EDGEDIFF_LOADTEST_*``
variables.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edgediff.errors import InvalidArgumentError
from edgediff.request import SEED_MAX, GenerationRequest

T = TypeVar("T")

DEFAULT_VARIANT = "default"
"""Variant name meaning "the server's default variant" (sent as an empty string)."""
SERVER_DEFAULT = "default"
"""A steps value meaning "the server's default" (sent as 0: the server applies its tune profile's steps and sampler)."""


@dataclass(frozen=True)
class Weighted(Generic[T]):
    """A weighted choice among values; ``pick(rng)`` draws one in proportion to its weight.

    Attributes:
        values: The values, in the order written.
        weights: Their weights, each > 0.
    """

    values: tuple[T, ...]
    weights: tuple[float, ...]

    def pick(self, rng: random.Random) -> T:
        """Draw one value."""
        if len(self.values) == 1:
            return self.values[0]
        return rng.choices(self.values, weights=self.weights, k=1)[0]

    def shares(self) -> dict[str, float]:
        """Each value's expected share of the requests, 0..1 (for the report)."""
        total = sum(self.weights)
        return {str(v): w / total for v, w in zip(self.values, self.weights, strict=True)}


def parse_weighted(text: str, what: str, convert: type = str) -> Weighted[Any]:
    """Parse ``value[:weight],...`` into a ``Weighted``.

    Args:
        text: The spec, e.g. ``"onnx-fp32:3,torch-fp32:1"`` or ``"20"``.
        what: The option's name for error messages (``--variant``, ``EDGEDIFF_LOADTEST_STEPS``).
        convert: ``str`` or ``int`` (ints must be >= 1; with ``int``, ``default`` is 0: the server's default).

    Raises:
        InvalidArgumentError: Empty spec, empty value, weight not a positive number, value not a positive integer, or a
            value listed twice.
    """
    values: list[Any] = []
    weights: list[float] = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            raise InvalidArgumentError(f"{what}: empty entry in {text!r}; write value[:weight],... e.g. 'a:3,b:1'")
        raw_value, sep, raw_weight = item.rpartition(":") if ":" in item else (item, "", "")
        raw_value = raw_value.strip()
        if not raw_value:
            raise InvalidArgumentError(f"{what}: missing value in {item!r}")
        weight = 1.0
        if sep:
            try:
                weight = float(raw_weight)
            except ValueError:
                raise InvalidArgumentError(f"{what}: weight {raw_weight!r} of {raw_value!r} is not a number") from None
            if not (math.isfinite(weight) and weight > 0):
                raise InvalidArgumentError(f"{what}: weight of {raw_value!r} must be > 0, got {raw_weight!r}")
        value: Any = raw_value
        if convert is int and raw_value.lower() == SERVER_DEFAULT:
            value = 0
        elif convert is int:
            try:
                value = int(raw_value)
            except ValueError:
                raise InvalidArgumentError(f"{what}: {raw_value!r} is not an integer") from None
            if value < 1:
                raise InvalidArgumentError(f"{what}: values must be >= 1, got {value}")
        if value in values:
            raise InvalidArgumentError(f"{what}: {raw_value!r} is listed twice in {text!r}")
        values.append(value)
        weights.append(weight)
    return Weighted(tuple(values), tuple(weights))


@dataclass(frozen=True)
class SeedSpec:
    """How each request's seed is chosen: uniformly in ``low..high`` (``low == high``: always that seed)."""

    low: int = 0
    high: int = SEED_MAX
    text: str = "random"

    def pick(self, rng: random.Random) -> int:
        """Draw a seed."""
        return self.low if self.low == self.high else rng.randint(self.low, self.high)


def parse_seeds(text: str, what: str = "seeds") -> SeedSpec:
    """Parse ``random``, ``N`` or ``A-B`` (0 <= A <= B <= 2**63-1, ``edgediff.request.SEED_MAX``).

    Raises:
        InvalidArgumentError: Anything else, naming ``what``.
    """
    spec = str(text).strip().lower()
    if spec in ("", "random"):
        return SeedSpec()
    low_text, dash, high_text = spec.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise InvalidArgumentError(f"{what}: expected 'random', a seed N or a range A-B, got {text!r}") from None
    if not 0 <= low <= high <= SEED_MAX:
        raise InvalidArgumentError(f"{what}: seeds must satisfy 0 <= A <= B <= {SEED_MAX}, got {text!r}")
    return SeedSpec(low, high, spec)


@dataclass(frozen=True)
class RequestSpec:
    """One Generate request's fields; ``variant`` is ``""`` for the server's default."""

    variant: str
    steps: int
    batch: int
    eta: float
    seed: int

    @property
    def variant_label(self) -> str:
        """The variant's name in stats (``default`` for the server's default)."""
        return self.variant or DEFAULT_VARIANT


@dataclass(frozen=True)
class RequestMix:
    """The weighted mix every user draws its requests from.

    Attributes:
        variants: Weighted variant names (``default`` = the server's default variant).
        steps: Weighted steps (0: the server's default steps and sampler).
        batch: Weighted images per request.
        eta: DDIM eta of every request.
        seeds: How seeds are drawn.
    """

    variants: Weighted[str] = field(default_factory=lambda: Weighted((DEFAULT_VARIANT,), (1.0,)))
    steps: Weighted[int] = field(default_factory=lambda: Weighted((0,), (1.0,)))
    batch: Weighted[int] = field(default_factory=lambda: Weighted((1,), (1.0,)))
    eta: float = 0.0
    seeds: SeedSpec = field(default_factory=SeedSpec)

    @classmethod
    def parse(
        cls,
        variants: str = DEFAULT_VARIANT,
        steps: str = SERVER_DEFAULT,
        batch: str = "1",
        eta: str | float = 0.0,
        seeds: str = "random",
        *,
        names: dict[str, str] | None = None,
    ) -> RequestMix:
        """Build a mix from its text specs.

        Args:
            variants: ``value[:weight],...`` of variant names.
            steps: ``value[:weight],...`` of steps (``default``: the server's).
            batch: ``value[:weight],...`` of images per request.
            eta: DDIM eta, 0..1.
            seeds: ``random``, ``N`` or ``A-B``.
            names: The option name of each field for error messages (default: the field names).

        Raises:
            InvalidArgumentError: A spec that does not parse, or a value outside the core's ranges (those of
                ``GenerationRequest``), naming the option.
        """
        label = {"variants": "variants", "steps": "steps", "batch": "batch", "eta": "eta", "seeds": "seeds"}
        label.update(names or {})
        try:
            eta_value = float(eta)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{label['eta']}: {eta!r} is not a number") from None
        mix = cls(
            variants=parse_weighted(variants or DEFAULT_VARIANT, label["variants"]),
            steps=parse_weighted(steps, label["steps"], int),
            batch=parse_weighted(batch, label["batch"], int),
            eta=eta_value,
            seeds=parse_seeds(seeds, label["seeds"]),
        )
        # The lowest values are >= 1 and the seeds >= 0 already; the largest must be in the core's ranges too.
        GenerationRequest.validated(seed=mix.seeds.high, steps=max(mix.steps.values) or 1, eta=eta_value,
                                    batch=max(mix.batch.values),
                                    names={k: label[k] for k in ("steps", "batch", "eta")} | {"seed": label["seeds"]})
        return mix

    def next_request(self, rng: random.Random) -> RequestSpec:
        """Draw the next request."""
        variant = self.variants.pick(rng)
        return RequestSpec(
            variant="" if variant == DEFAULT_VARIANT else variant,
            steps=self.steps.pick(rng),
            batch=self.batch.pick(rng),
            eta=self.eta,
            seed=self.seeds.pick(rng),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for the report (expected shares of each value)."""
        return {
            "variants": self.variants.shares(),
            "steps": {SERVER_DEFAULT if k == "0" else k: v for k, v in self.steps.shares().items()},
            "batch": self.batch.shares(),
            "eta": self.eta,
            "seeds": self.seeds.text,
        }
