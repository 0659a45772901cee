from pathlib import Path

from edgediff.bench.environment import cpu_model, default_label, fingerprint, git_commit, jetson_info

X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n"
JETSON = "processor\t: 0\nBogoMIPS\t: 62.50\nCPU part\t: 0xd42\n\nHardware\t: NVIDIA Orin Nano Developer Kit\n"


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "x86").write_text(X86)
    (tmp_path / "arm").write_text(JETSON)
    assert cpu_model(tmp_path / "x86") == "Intel(R) Xeon(R) Gold 6230"
    assert cpu_model(tmp_path / "arm") == "NVIDIA Orin Nano Developer Kit"
    assert cpu_model(tmp_path / "missing")  # falls back to the platform, never empty


def test_jetson_info_from_a_fake_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert jetson_info(tmp_path) is None  # no release file, no nvpmodel: not a Jetson
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_text("NVIDIA Jetson Orin Nano\x00")
    info = jetson_info(tmp_path)
    assert info["model"] == "NVIDIA Jetson Orin Nano" and info["l4t_release"].startswith("# R36")
    assert info["power_mode"] is None and "nvpmodel not found" in info["reason"]
    assert default_label({"jetson": info, "gpu": {"devices": []}, "cpu": {"model": "arm"}}) == "NVIDIA Jetson Orin Nano"


def test_jetson_power_mode_from_nvpmodel(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R32 (release)\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvpmodel"
    script.write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert jetson_info(tmp_path)["power_mode"] == "MAXN"


def test_git_commit_outside_a_checkout(tmp_path: Path) -> None:
    info = git_commit(tmp_path)
    assert info["commit"] is None and info["reason"]


def test_fingerprint_has_what_a_report_needs() -> None:
    env = fingerprint("my device")
    assert env["label"] == "my device"
    assert env["cpu"]["logical_cores"] >= 1 and env["os"]["system"] and env["python"]
    assert "torch" in env["libraries"] and "numpy" in env["libraries"]
    assert env["gpu"]["devices"] or env["gpu"]["reason"]
