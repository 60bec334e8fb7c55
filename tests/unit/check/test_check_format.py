"""orion-check's output format (the seeds' lines), process lookup in a fake /proc, and the
checks' exit codes; no GPU, no running oriond, no controller process needed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from check_fakes import make_proc

from orion_virt.check.common import (
    GpuProbe,
    _program_names,
    check_mps,
    check_nvidia,
    find_processes,
    nvidia_driver_version,
)
from orion_virt.check.report import Report


def test_report_lines_match_the_seed_columns() -> None:
    out = io.StringIO()
    r = Report(out)
    r.flag("Enable SHM", True)
    r.flag("Enable RDMA", False)
    r.flag("Enable Local QEMU-KVM with SHM", True)
    r.value("Binding IP Address", "33.31.0.1")
    r.value("Listening Port", 9960)
    assert out.getvalue().splitlines() == [
        "Enable SHM                              [Yes]",
        "Enable RDMA                             [No]",
        "Enable Local QEMU-KVM with SHM          [Yes]",
        "Binding IP Address :                    33.31.0.1",
        "Listening Port :                        9960",
    ]
    assert r.exit_code == 0
    r.warn("w")
    assert r.exit_code == 0
    r.error("e")
    assert r.exit_code == 1 and out.getvalue().endswith("[Warning] w\n[Error] e\n")


def test_sections_are_separated_by_one_blank_line() -> None:
    out = io.StringIO()
    r = Report(out)
    r.section("Searching NVIDIA GPU")
    r.line("x")
    r.section("Checking NVIDIA MPS")
    assert out.getvalue() == "Searching NVIDIA GPU ...\nx\n\nChecking NVIDIA MPS ...\n"


def test_gpus_found_block_is_the_seeds() -> None:
    out = io.StringIO()
    check_nvidia(Report(out), GpuProbe(2, "2 GPU(s) found", "418.67",
                                       ("Tesla V100-PCIE-16GB", "Tesla V100-PCIE-16GB")), True)
    assert out.getvalue() == (
        "Searching NVIDIA GPU ...\n"
        "CUDA driver 418.67\n"
        "418.67 is installed.\n"
        "2 NVIDIA GPUs are found :\n"
        "    0 : Tesla V100-PCIE-16GB\n"
        "    1 : Tesla V100-PCIE-16GB\n")


@pytest.mark.parametrize("required", [True, False])
def test_no_gpu_fails_only_when_the_cuda_backend_is_required(required: bool) -> None:
    out = io.StringIO()
    r = Report(out)
    check_nvidia(r, GpuProbe(0, "no usable CUDA driver (libcuda.so.1 not found)"), required)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["Searching NVIDIA GPU ...", "No NVIDIA GPU is found"]
    assert "libcuda.so.1 not found" in lines[2]
    assert lines[2].startswith("[Error]" if required else "[Warning]")
    assert r.exit_code == (1 if required else 0)


def test_driver_version_from_proc(tmp_path: Path) -> None:
    f = tmp_path / "version"
    f.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  418.67  Sat Apr  6 03:07:24 "
                 "CDT 2019\nGCC version:  gcc version 5.4.0\n")
    assert nvidia_driver_version(f) == "418.67"
    assert nvidia_driver_version(tmp_path / "absent") == ""


def test_program_names() -> None:
    assert _program_names(["/usr/bin/oriond"]) == ["oriond"]
    assert "oriond" in _program_names(["/venv/bin/python3", "/venv/bin/oriond", "--config", "x"])
    assert "oriond" in _program_names(["python3", "-u", "/venv/bin/oriond"])
    assert "oriond" in _program_names(["python3", "-m", "orion_virt.cli.oriond"])
    assert "oriond" not in _program_names(["python3", "/x/orion-check", "oriond"])
    assert _program_names([]) == []


def test_find_processes_in_a_fake_proc(tmp_path: Path) -> None:
    make_proc(tmp_path, 100, ["/usr/bin/oriond"], uid=0)
    make_proc(tmp_path, 101, ["/usr/bin/oriond"], ppid=100)  # a forked session worker
    make_proc(tmp_path, 200, ["/venv/bin/python3", "/venv/bin/oriond", "--config", "s.conf"],
              uid=65534, cwd=tmp_path / "etc")
    make_proc(tmp_path, 300, ["/usr/bin/bash", "-c", "oriond"])
    (tmp_path / "self").mkdir()
    found = find_processes("oriond", tmp_path)
    assert [p.pid for p in found] == [100, 200]
    assert found[0].user == "root" and found[0].command_line == "/usr/bin/oriond"
    assert found[1].user == "nobody" and found[1].args_after("oriond") == ["--config", "s.conf"]
    assert found[1].cwd == str(tmp_path / "etc")
    assert find_processes("orion-controller", tmp_path) == []
    assert find_processes("oriond", tmp_path / "missing") == []


def test_mps_on_and_off(tmp_path: Path) -> None:
    out = io.StringIO()
    r = Report(out)
    check_mps(r, tmp_path, pipe_dir=tmp_path / "mps")
    assert out.getvalue() == "Checking NVIDIA MPS ...\nNVIDIA CUDA MPS is off.\n"
    make_proc(tmp_path, 42, ["nvidia-cuda-mps-control", "-d"])
    out = io.StringIO()
    r = Report(out)
    check_mps(r, tmp_path, pipe_dir=tmp_path / "mps")
    assert "NVIDIA CUDA MPS is on." in out.getvalue() and "pid 42" in out.getvalue()
    assert r.exit_code == 0 and r.warnings
