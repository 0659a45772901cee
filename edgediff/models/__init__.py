"""Model presets and weight loading."""

from edgediff.models.presets import ModelPreset, get_preset, list_presets
from edgediff.models.weights import LDMComponents, WeightsOrigin, load_components, save_components

__all__ = [
    "LDMComponents",
    "ModelPreset",
    "WeightsOrigin",
    "get_preset",
    "list_presets",
    "load_components",
    "save_components",
]
