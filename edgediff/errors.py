"""Exceptions the CLI and the services turn into one clear line (exit code 2, or a gRPC status)."""

from __future__ import annotations


class EdgediffError(Exception):
    """Base class: an error whose message is meant for the user, shown without a traceback."""


class InvalidArgumentError(EdgediffError, ValueError):
    """An argument is out of its allowed range; the message names it, the value received and the range."""


class UnknownPresetError(InvalidArgumentError):
    """The model preset name is not one of the known presets."""


class UnknownVariantError(InvalidArgumentError):
    """The variant name is not in the registry."""


class VariantUnavailableError(EdgediffError):
    """The variant exists but cannot run on this machine; the message says why."""


class WeightsError(EdgediffError):
    """A weights folder is missing a file, or a tensor does not match the preset's architecture."""


class BackendMissingError(EdgediffError, ImportError):
    """An optional backend (onnxruntime, openvino, tensorrt, tritonclient, ...) is not installed."""
