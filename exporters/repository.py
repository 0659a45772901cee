"""Write a Triton model repository for one model preset, one target and a list of variants.

Layout (``<v>`` is the variant with ``-`` replaced by ``_``)::

    <repo>/manifest.json                 what was exported (written last; see exporters.manifest)
    <repo>/unet_<v>/config.pbtxt         + 1/<artifact> (+ 1/model.py on cpu) + export_report.json
    <repo>/vqdec_<v>/config.pbtxt        the same for the VQ decoder
    <repo>/ldm_<v>/config.pbtxt          + 1/model.py: the DDIM pipeline, BLS calls to unet_<v> and vqdec_<v>

A DeepCache variant's (``openvino-bf16-dc3``) ``unet_<v>`` is stateful (part ``unet-deepcache``): both DeepCache
artifacts (``1/unet-full/``, ``1/unet-shallow/``) in one Python model under Triton's sequence batcher, which keeps
each image's deep feature in its own process; ``ldm_<v>`` sends each image's steps as one sequence. The interval is
in the model's ``parameters`` and in the manifest's ``deepcache`` entry.

Every model folder is assembled in a staging folder inside the repository and renamed into place only when all of
them are complete, under a lock, with the manifest saying ``exporting`` meanwhile: an interrupted export is never
taken for a finished one. Artifacts come from the core's content-hash cache and are hard-linked (or copied).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgediff.artifacts.build import UNET_FULL, UNET_SHALLOW, build_artifact
from edgediff.constants import (
    PIPELINE_MODEL_PREFIX,
    SERVE_MAX_BATCH,
    UNET_MODEL_PREFIX,
    VQDEC_MODEL_PREFIX,
    triton_model_name,
)
from edgediff.errors import BackendMissingError, EdgediffError, InvalidArgumentError
from edgediff.io import atomic_write_json, atomic_write_text
from edgediff.models import ModelSpec, get_preset, load_components
from edgediff.variants import get_variant
from exporters.configs import json_parameter, ldm_config, part_config, part_io, render_config
from exporters.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    STAGING_PREFIX,
    STATE_COMPLETE,
    STATE_EXPORTING,
    TRASH_PREFIX,
    exporter_sha256,
    file_sha256,
    read_manifest,
    tool_versions,
    tree_files,
    tree_sha256,
    tree_size,
)
from exporters.part_runtime import PART_SUBFOLDER, PartSpec
from exporters.targets import (
    DEEPCACHE_PART,
    PYTHON_BACKEND,
    WEIGHTS_FORMAT,
    Placement,
    Target,
    build_blocker,
    deepcache_interval,
    get_target,
    unet_part,
)

logger = logging.getLogger(__name__)

PARTS = ("unet", "vqdec")
"""The part models of every variant (a DeepCache variant's ``unet`` model serves part ``unet-deepcache``)."""
PART_PREFIX = {"unet": UNET_MODEL_PREFIX, "vqdec": VQDEC_MODEL_PREFIX}
VERSION = "1"
REPORT_NAME = "export_report.json"
LOCK_NAME = ".export.lock"
PYTHON_MODELS = Path(__file__).parent / "python_models"
PART_MODEL_SOURCE = PYTHON_MODELS / "part_model.py"
LDM_MODEL_SOURCE = PYTHON_MODELS / "ldm_model.py"
_NOT_ARTIFACT = ("model.py",)
"""Files of a version folder that are code, not artifact (left out of the artifact's sha256 and size)."""
CONFIGS_ONLY_REASON = "configs only (--configs-only): no artifact was built"


def variant_parts(variant: str) -> dict[str, str]:
    """What each part model of a variant serves, keyed like ``model_names``.

    ``{"unet": "unet", "vqdec": "vqdec"}``, or for a DeepCache variant ``{"unet": "unet-deepcache", "vqdec": "vqdec"}``.
    """
    return {"unet": unet_part(variant), "vqdec": "vqdec"}


def model_names(variant: str) -> dict[str, str]:
    """Triton model names of a variant: ``{"unet": "unet_onnx_fp32", "vqdec": ..., "ldm": "ldm_onnx_fp32"}``."""
    names = {part: triton_model_name(PART_PREFIX[part], variant) for part in PARTS}
    return {**names, "ldm": triton_model_name(PIPELINE_MODEL_PREFIX, variant)}


def resolve_variants(target: Target, variants: Sequence[str]) -> list[str]:
    """The variants to export (the target's defaults when empty), each checked against the registry and target."""
    names = list(dict.fromkeys(v.strip() for v in variants if v.strip())) or list(target.default_variants)
    for name in names:
        get_variant(name)
        target.placement(name)
    return names


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: copy
        shutil.copy2(src, dst)


def _io_shapes(part: str, components: ModelSpec) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Artifact I/O shapes with the batch axis as -1 (the timestep is ``[batch]`` in every artifact)."""
    inputs, outputs = part_io(part, components.preset.latent_shape, components.preset.image_size)

    def shape(t: dict) -> list[int]:
        return [-1, *t.get("reshape", {}).get("shape", t["dims"])]

    return {t["name"]: shape(t) for t in inputs}, {t["name"]: shape(t) for t in outputs}


def _first_blocker(formats: Sequence[str]) -> str | None:
    """Why one of ``formats`` cannot be built here, or None when all can."""
    return next((reason for reason in map(build_blocker, formats) if reason), None)


def _place_artifact(components: ModelSpec, part: str, placement: Placement, version_dir: Path) -> dict[str, Any]:
    """Put the part's artifact into ``version_dir``; return its export report (times, sizes, op counts)."""
    fmt = placement.format_of(part)
    if fmt == WEIGHTS_FORMAT:
        t0 = time.perf_counter()
        module = components.unet if part == "unet" else components.vqvae
        module.save_pretrained(version_dir / placement.filename / PART_SUBFOLDER[part], safe_serialization=True)
        return {"file": placement.filename, "export_s": time.perf_counter() - t0, "cached": False}
    folder, report = build_artifact(components, part, fmt)
    for src in folder.iterdir():
        if src.is_file() and src.name != "artifact.json":
            _link_or_copy(src, version_dir / src.name)
    report = dict(report)
    if fmt != "onnx-fp32" and fmt.startswith(("onnx", "openvino", "tensorrt")):
        _, source = build_artifact(components, part, "onnx-fp32")  # cached: the graph these were converted from
        report["source_onnx"] = {k: source.get(k) for k in ("ops_before", "ops_after", "size_before_bytes",
                                                            "size_bytes", "export_s", "simplify_s")}
    return report


def _artifact_parts(part: str, filename: str) -> list[tuple[str, str]]:
    """``(artifact part, path relative to the model folder)`` of each artifact a part model holds."""
    if part == DEEPCACHE_PART:
        return [(sub, f"{VERSION}/{sub}/{filename}") for sub in (UNET_FULL, UNET_SHALLOW)]
    return [(part, f"{VERSION}/{filename}")]


def _write_part_model(
    components: ModelSpec, part: str, placement: Placement, target: Target, model_dir: Path, skipped: str | None
) -> dict[str, Any]:
    name = model_dir.name
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    artifacts = _artifact_parts(part, placement.filename)
    spec = PartSpec(variant=placement.variant, part=part, preset=components.preset.name, artifact=artifacts[0][1])
    if part == DEEPCACHE_PART:
        spec = dataclasses.replace(spec, shallow_artifact=artifacts[1][1],
                                   deepcache_interval=placement.deepcache_interval)
    config = part_config(name=name, part=part, placement=placement, latent_shape=components.preset.latent_shape,
                         image_size=components.preset.image_size, max_batch_size=target.max_batch_size,
                         parameters=spec.to_parameters(), max_sequences=SERVE_MAX_BATCH * target.pipeline_instances,
                         queue_delay_us=target.queue_delay_us)
    atomic_write_text(model_dir / "config.pbtxt", render_config(config))
    if placement.backend == PYTHON_BACKEND:
        shutil.copyfile(PART_MODEL_SOURCE, version_dir / "model.py")
    inputs, outputs = _io_shapes(part, components)
    entry: dict[str, Any] = {"model": name, "part": part, "format": placement.format_of(part),
                             "backend": placement.backend_label, "instance_kind": placement.instance_kind,
                             "inputs": inputs, "outputs": outputs}
    if skipped:
        return {**entry, "artifact": None, "skipped": skipped}
    reports = {sub: _place_artifact(components, sub, placement, (model_dir / rel).parent) for sub, rel in artifacts}
    files = tree_files(version_dir, exclude=_NOT_ARTIFACT)
    size = tree_size(version_dir, exclude=_NOT_ARTIFACT)
    report = dict(reports[part]) if len(reports) == 1 else {"artifacts": reports}
    report.update(model=name, part=part, variant=placement.variant, format=placement.format_of(part),
                  artifact=artifacts[0][1], size_bytes=size)
    atomic_write_json(model_dir / REPORT_NAME, report)
    hashes = {str(f.relative_to(model_dir)): file_sha256(f) for f in files}
    sizes = {str(f.relative_to(model_dir)): f.stat().st_size for f in files}  # checked at load (verify_repository)
    digest = next(iter(hashes.values())) if len(hashes) == 1 else tree_sha256(version_dir, exclude=_NOT_ARTIFACT)
    export_s = [r.get("build_s", r.get("export_s")) for r in reports.values()]
    return {**entry, "artifact": f"{name}/{artifacts[0][1]}", "files": hashes, "file_sizes": sizes,
            "sha256": digest, "size_bytes": size,
            "report": f"{name}/{REPORT_NAME}",
            "export_s": sum(export_s) if None not in export_s else None,
            "cached": all(bool(r.get("cached")) for r in reports.values()), "skipped": None}


def _write_ldm_model(components: ModelSpec, variant: str, target: Target, model_dir: Path,
                     scheduler: str = "ddim") -> dict[str, Any]:
    names = model_names(variant)
    preset = components.preset
    interval = deepcache_interval(variant)
    parameters = {
        "preset": preset.name,
        "variant": variant,
        "target": target.name,
        "unet_model": names["unet"],
        "deepcache_interval": str(interval),
        "vqdec_model": names["vqdec"],
        "scheduler_config": json_parameter(components.scheduler_config),
        "scheduler": scheduler,  # the sampler of requests without SCHEDULER (edgediff export --scheduler)
        "scaling_factor": repr(components.scaling_factor),
        "latent_shape": json_parameter(list(preset.latent_shape)),
        "image_size": str(preset.image_size),
        "part_max_batch": str(target.max_batch_size),
        "max_batch": str(SERVE_MAX_BATCH),
        "weights": components.weights.kind,
        "weights_sha256": components.weights.sha256,
    }
    (model_dir / VERSION).mkdir(parents=True)
    atomic_write_text(model_dir / "config.pbtxt",
                      render_config(ldm_config(name=model_dir.name, image_size=preset.image_size,
                                               parameters=parameters, instances=target.pipeline_instances)))
    shutil.copyfile(LDM_MODEL_SOURCE, model_dir / VERSION / "model.py")
    return {"model": model_dir.name, "backend": PYTHON_BACKEND, "instance_kind": "KIND_CPU",
            "instances": target.pipeline_instances, "unet_model": names["unet"], "deepcache_interval": interval}


@contextlib.contextmanager
def _export_lock(repo: Path) -> Iterator[None]:
    with open(repo / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise EdgediffError(f"another 'edgediff export' is writing {repo}; wait for it to finish") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _same_model(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether the old repository's models can stay beside the new ones: same preset, target, weights and exporter."""
    if not old:
        return False
    return (old.get("preset") == new["preset"] and old.get("target", {}).get("name") == new["target"]["name"]
            and old.get("weights", {}).get("sha256") == new["weights"]["sha256"]
            and old.get("exporter_sha256") == new["exporter_sha256"])


def _owned_models(manifest: dict[str, Any]) -> set[str]:
    return {name for entry in manifest.get("variants", {}).values() for name in entry.get("models", {}).values()}


def export_repository(
    *,
    model: str,
    target: str,
    variants: Sequence[str],
    repo: Path | str,
    weights: str | None = None,
    configs_only: bool = False,
    weights_seed: int = 0,
    progress: Callable[[str], None] | None = None,
    scheduler: str = "ddim",
) -> dict:
    """Export ``variants`` of preset ``model`` for ``target`` into the Triton repository ``repo``.

    Variants already in ``repo`` for the same preset, target, weights and exporter code (``exporter_sha256``) are
    kept (the export adds or replaces); a repository of another preset, target, weights or exporter code has its
    models replaced. Files in ``repo`` that no manifest
    names (its README, models of your own) are left alone.

    Args:
        model: Preset name (``celebahq-256``, ``tiny``).
        target: ``cpu``, ``rtx`` or ``jetson``.
        variants: Variant names; empty means the target's defaults.
        repo: Repository folder (created if missing).
        weights: A diffusers-format weights folder; None means ``$EDGEDIFF_WEIGHTS``, bundled or synthetic weights.
        configs_only: Write configs and the manifest without building any artifact (``artifact: null``).
        weights_seed: Seed of synthetic weights.
        progress: Called with one line per step (the CLI prints them).
        scheduler: The sampler the pipeline models use when a request sends no ``SCHEDULER`` (``ddim``, ``dpmpp``,
            ``unipc``).

    Returns:
        The manifest dict (also written to ``<repo>/manifest.json``).

    Raises:
        InvalidArgumentError: unknown target, preset or variant, or a variant the target cannot serve.
        BackendMissingError: a CPU-target artifact needs a package that is not installed.
    """
    say = progress or (lambda line: logger.info("%s", line))
    tgt = get_target(target)
    preset = get_preset(model)
    names = resolve_variants(tgt, variants)
    blockers = {v: (CONFIGS_ONLY_REASON if configs_only else _first_blocker(tgt.placement(v).formats))
                for v in names}
    if not tgt.gpu:
        for v, reason in blockers.items():
            if reason and not configs_only:
                raise BackendMissingError(f"--variants: cannot export {v} for target {tgt.name}: {reason}")
    if not tgt.gpu:
        for v in names:
            avail = get_variant(v).availability()
            if not avail.ok:
                say(f"note: {v} cannot run on this machine ({avail.reason}); its models load only where it can")
    components = load_components(preset, weights, seed=weights_seed, warn=False)
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"--repo: {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "state": STATE_EXPORTING,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset.name,
        "model": preset.to_dict(),
        "target": {"name": tgt.name, "description": tgt.description, "max_batch_size": tgt.max_batch_size,
                   "pipeline_instances": tgt.pipeline_instances},
        "weights": {**components.weights.to_dict(), "label": components.weights.label()},
        "versions": tool_versions(),
        "exporter_sha256": exporter_sha256(),
        "variants": {},
    }
    with _export_lock(root):
        for stale in [*root.glob(STAGING_PREFIX + "*"), *root.glob(TRASH_PREFIX + "*")]:
            shutil.rmtree(stale, ignore_errors=True)
        staging = root / f"{STAGING_PREFIX}{os.getpid()}"
        staging.mkdir()
        try:
            for variant in names:
                placement = tgt.placement(variant)
                models = model_names(variant)
                entry: dict[str, Any] = {"variant": variant, "backend": placement.backend_label,
                                         "instance_kind": placement.instance_kind, "models": models, "parts": {}}
                for role, part in variant_parts(variant).items():
                    say(f"{variant}: {part} ({placement.format_of(part)}) ...")
                    entry["parts"][role] = _write_part_model(components, part, placement, tgt,
                                                             staging / models[role], blockers[variant])
                    if blockers[variant]:
                        say(f"{variant}: {part}: skipped: {blockers[variant]}")
                entry["ldm"] = _write_ldm_model(components, variant, tgt, staging / models["ldm"], scheduler)
                entry["skipped"] = blockers[variant]
                if placement.deepcache_interval > 1:
                    entry["deepcache"] = {"interval": placement.deepcache_interval, "model": models["unet"],
                                          "artifacts": [rel for _, rel in _artifact_parts(DEEPCACHE_PART,
                                                                                          placement.filename)]}
                manifest["variants"][variant] = entry
            _install(root, staging, manifest, say)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _install(root: Path, staging: Path, manifest: dict[str, Any], say: Callable[[str], None]) -> None:
    """Move the staged models into ``root`` and write the manifest (``exporting`` first, ``complete`` last)."""
    old = read_manifest(root)
    obsolete: set[str] = set()
    if _same_model(old, manifest):
        kept = {v: e for v, e in old["variants"].items()
                if v not in manifest["variants"] and all((root / m).is_dir() for m in e.get("models", {}).values())}
        manifest["variants"] = {**kept, **manifest["variants"]}
        # a re-exported variant's models that its new entry no longer has (e.g. an older repository layout)
        obsolete = {m for v, e in old["variants"].items() if v in manifest["variants"]
                    for m in e.get("models", {}).values()}
    elif old:
        obsolete = _owned_models(old)
        say(f"replacing the {old.get('preset')}/{old.get('target', {}).get('name')} models of {root} (another "
            "preset, target, weights or exporter code)")
    atomic_write_json(root / MANIFEST_NAME, manifest)  # state: exporting
    trash = root / f"{TRASH_PREFIX}{os.getpid()}"
    trash.mkdir()
    try:
        for staged in sorted(staging.iterdir()):
            final = root / staged.name
            if final.exists():
                final.rename(trash / staged.name)
            staged.rename(final)
        for name in sorted(obsolete - _owned_models(manifest)):
            if (root / name).is_dir():
                (root / name).rename(trash / name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    manifest["state"] = STATE_COMPLETE
    atomic_write_json(root / MANIFEST_NAME, manifest)
