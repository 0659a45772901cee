"""The repository writer: artifacts, reports and manifest; merging; an interrupted export is never taken as done."""

import importlib.metadata
import json

import numpy as np
import pytest
import torch

from edgediff.errors import EdgediffError
from exporters import repository
from exporters.manifest import MANIFEST_NAME, file_sha256, unfinished_export
from exporters.part_runtime import PartRunner, PartSpec
from exporters.repository import export_repository, model_names
from services.triton.launcher import TritonServer, TritonStartError


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    manifest = export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo)
    return repo, manifest


def test_manifest_records_weights_versions_hashes_and_shapes(onnx_repo):
    repo, manifest = onnx_repo
    assert json.loads((repo / MANIFEST_NAME).read_text()) == manifest
    assert manifest["state"] == "complete"
    assert manifest["preset"] == "tiny" and manifest["target"]["name"] == "cpu"
    assert manifest["weights"]["kind"] == "synthetic" and len(manifest["weights"]["sha256"]) == 64
    for tool in ("torch", "onnx", "onnxruntime", "tensorrt", "openvino"):
        assert tool in manifest["versions"]
    assert manifest["versions"]["torch"] == importlib.metadata.version("torch")
    assert manifest["versions"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    unet = manifest["variants"]["onnx-fp32"]["parts"]["unet"]
    assert unet["artifact"] == "unet_onnx_fp32/1/model.onnx"
    assert unet["sha256"] == file_sha256(repo / unet["artifact"])
    assert unet["size_bytes"] == (repo / unet["artifact"]).stat().st_size
    assert unet["inputs"] == {"sample": [-1, 3, 16, 16], "timestep": [-1]}
    assert unet["outputs"] == {"noise_pred": [-1, 3, 16, 16]}
    assert manifest["variants"]["onnx-fp32"]["parts"]["vqdec"]["outputs"] == {"image": [-1, 3, 64, 64]}


def test_export_report_has_time_size_and_op_counts_before_and_after_onnxsim(onnx_repo):
    repo, manifest = onnx_repo
    report = json.loads((repo / manifest["variants"]["onnx-fp32"]["parts"]["unet"]["report"]).read_text())
    assert report["export_s"] > 0 and report["size_bytes"] > 0
    before, after = report["ops_before"], report["ops_after"]
    # onnxsim folds the shape arithmetic of the traced graph (the study's Figure 3)
    assert before["Constant"] > after.get("Constant", 0)
    assert before["Shape"] > after.get("Shape", 0)
    assert sum(before.values()) > sum(after.values())
    assert before["Conv"] == after["Conv"]


def test_part_runner_matches_the_in_process_variant(onnx_repo, tiny_components):
    from edgediff.variants import build_variant

    repo, _ = onnx_repo
    built = build_variant("onnx-fp32", tiny_components)
    spec = PartSpec(variant="onnx-fp32", part="unet", preset="tiny", artifact="1/model.onnx")
    runner = PartRunner(spec, repo / model_names("onnx-fp32")["unet"])
    sample = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    timestep = torch.tensor([900, 20], dtype=torch.int64)
    expected = built.unet.sequence()(sample, timestep).numpy()
    got = runner({"sample": sample.numpy(), "timestep": timestep.numpy().reshape(2, 1)})  # Triton's [batch, 1]
    np.testing.assert_array_equal(got, expected)


def test_a_second_export_adds_variants_and_another_target_replaces_them(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "README.md").write_text("kept\n")
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo)
    manifest = export_repository(model="tiny", target="cpu", variants=["torch-fp32"], repo=repo)
    assert set(manifest["variants"]) == {"onnx-fp32", "torch-fp32"}
    assert (repo / "unet_onnx_fp32" / "1" / "model.onnx").is_file()
    assert (repo / "unet_torch_fp32" / "1" / "weights" / "unet" / "config.json").is_file()
    manifest = export_repository(model="tiny", target="rtx", variants=["onnx-fp16"], repo=repo, configs_only=True)
    assert set(manifest["variants"]) == {"onnx-fp16"}
    assert not (repo / "unet_onnx_fp32").exists() and not (repo / "ldm_torch_fp32").exists()
    assert (repo / "README.md").read_text() == "kept\n"
    assert unfinished_export(repo) is None


def rewrite_manifest(repo, edit) -> None:
    """Change ``repo``'s manifest in place with ``edit(manifest)`` (to stand for one an older edgediff wrote)."""
    path = repo / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_re_exporting_a_variant_removes_the_models_its_old_layout_had(tmp_path):
    # models a variant's manifest entry owned but its new export does not write (say, DeepCache's former
    # unet_full_<v> + unet_shallow_<v>) go when it is exported again; other variants' models and files nobody owns stay
    repo = tmp_path / "r"
    export_repository(model="tiny", target="cpu", variants=["openvino-bf16-dc3", "onnx-fp32"], repo=repo,
                      configs_only=True)
    old_models = ("unet_full_openvino_bf16_dc3", "unet_shallow_openvino_bf16_dc3")
    for old in old_models:
        (repo / old).mkdir()
    rewrite_manifest(repo, lambda m: m["variants"]["openvino-bf16-dc3"]["models"].update({o: o for o in old_models}))
    (repo / "mine").mkdir()
    export_repository(model="tiny", target="cpu", variants=["openvino-bf16-dc3"], repo=repo, configs_only=True)
    assert not any((repo / old).exists() for old in old_models)
    assert all((repo / kept).is_dir() for kept in ("unet_openvino_bf16_dc3", "unet_onnx_fp32", "mine"))


def test_an_export_by_other_exporter_code_replaces_every_model(tmp_path):
    # the old models' configs and model.py copies may not fit this edgediff, so none of them is kept
    repo = tmp_path / "r"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32", "openvino-fp32"], repo=repo,
                      configs_only=True)
    rewrite_manifest(repo, lambda m: m.update(exporter_sha256="0" * 64))
    manifest = export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo, configs_only=True)
    assert set(manifest["variants"]) == {"onnx-fp32"} and not (repo / "unet_openvino_fp32").exists()
    assert json.loads((repo / "manifest.json").read_text())["exporter_sha256"] != "0" * 64


def test_an_interrupted_export_leaves_the_previous_repository(tmp_path, monkeypatch):
    repo = tmp_path / "r"
    before = export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo, configs_only=True)
    real = repository.build_artifact

    def failing(components, part, fmt, **kwargs):
        if part == "vqdec":
            raise RuntimeError("disk full")
        return real(components, part, fmt, **kwargs)

    monkeypatch.setattr(repository, "build_artifact", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo)
    assert json.loads((repo / MANIFEST_NAME).read_text()) == before
    assert not (repo / "unet_onnx_fp32" / "1" / "model.onnx").exists()
    assert not list(repo.glob(".staging-*")) and unfinished_export(repo) is None


def test_a_half_finished_repository_is_refused_before_starting_triton(tmp_path, ports):
    repo = tmp_path / "r"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo, configs_only=True)
    (repo / ".staging-4242").mkdir()
    with pytest.raises(TritonStartError, match="interrupted"):
        TritonServer(repo, **ports).start()
    (repo / ".staging-4242").rmdir()
    manifest = json.loads((repo / MANIFEST_NAME).read_text())
    (repo / MANIFEST_NAME).write_text(json.dumps({**manifest, "state": "exporting"}))
    with pytest.raises(TritonStartError, match="did not finish"):
        TritonServer(repo, **ports).start()


def test_part_spec_needs_its_parameters():
    with pytest.raises(EdgediffError, match="lack artifact"):
        PartSpec.from_parameters({"variant": {"string_value": "onnx-fp32"}, "part": "unet", "preset": "tiny"})


def test_a_taken_port_is_refused_before_starting_triton(tmp_path, ports):
    import socket

    repo = tmp_path / "r"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo, configs_only=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports["grpc_port"]))
        listener.listen()
        with pytest.raises(TritonStartError, match=f"--grpc-port {ports['grpc_port']} on 127.0.0.1 is not free"):
            TritonServer(repo, **ports).start()


def test_connections_of_a_dead_server_do_not_block_its_port(tmp_path, ports):
    # a killed tritonserver leaves its accepted connections in TIME_WAIT; restarting on the same port must work
    import socket

    port = ports["http_port"]
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the check used to do: refused while TIME_WAIT lasts
    TritonServer(tmp_path, **ports)._check_ports_free()


def test_a_weights_folder_is_recorded_with_its_sha256(tmp_path, tiny_components):
    from edgediff.models import save_components

    weights = save_components(tiny_components, tmp_path / "weights")
    manifest = export_repository(model="tiny", target="cpu", variants=["torch-fp32"], repo=tmp_path / "r",
                                 weights=str(weights))
    assert manifest["weights"]["kind"] == "directory"
    assert manifest["weights"]["path"] == str(weights)
    assert len(manifest["weights"]["sha256"]) == 64 and manifest["weights"]["sha256"] != tiny_components.weights.sha256
    spec = PartSpec(variant="torch-fp32", part="vqdec", preset="tiny", artifact="1/weights")
    runner = PartRunner(spec, tmp_path / "r" / model_names("torch-fp32")["vqdec"])
    latents = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = tiny_components.vqvae.decode(latents, return_dict=False)[0].numpy()
    np.testing.assert_array_equal(runner({"latents": latents.numpy()}), expected)


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_damaged_artifact_is_refused_with_a_clear_error(onnx_repo, tmp_path, ports, damage):
    import shutil

    from exporters.manifest import repository_problems, verify_repository

    source, manifest = onnx_repo
    part = manifest["variants"]["onnx-fp32"]["parts"]["unet"]
    assert part["file_sizes"] == {rel: (source / part["model"] / rel).stat().st_size for rel in part["files"]}
    assert repository_problems(source) == []
    repo = tmp_path / "copy"
    shutil.copytree(source, repo)  # copies, not links: the module's repository and the cache stay intact
    artifact = repo / part["model"] / "1" / "model.onnx"
    data = artifact.read_bytes()
    if damage == "truncate":
        artifact.write_bytes(data[: len(data) // 2])
        expected = "truncated or altered"
    else:
        artifact.write_bytes(data[:-16] + bytes(16))  # same size, other bytes: only the sha256 tells
        expected = "sha256"
    problems = repository_problems(repo)
    assert len(problems) == 1 and "unet_onnx_fp32/1/model.onnx" in problems[0] and expected in problems[0]
    with pytest.raises(EdgediffError, match="will not be served"):
        verify_repository(repo)
    with pytest.raises(TritonStartError, match=r"unet_onnx_fp32/1/model\.onnx"):
        TritonServer(repo, **ports).start()  # refused before any tritonserver starts
