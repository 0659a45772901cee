"""Variants: one interface for "a UNet and a VQ decoder that run one way", and the registry of them."""

from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, Variant
from edgediff.variants.registry import (
    BASELINE,
    all_variants,
    available_variants,
    build_variant,
    get_variant,
    load_model,
    parse_variant_list,
    register,
    require_available,
    variant_names,
)

__all__ = [
    "BASELINE",
    "Availability",
    "BuildOptions",
    "BuiltVariant",
    "Variant",
    "all_variants",
    "available_variants",
    "build_variant",
    "get_variant",
    "load_model",
    "parse_variant_list",
    "register",
    "require_available",
    "variant_names",
]
