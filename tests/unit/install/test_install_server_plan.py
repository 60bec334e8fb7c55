"""install-server's planning (pure): the commands it runs, the links, the files and their modes,
and the checked-in server/ files being what it writes for the default prefix."""

from __future__ import annotations

from pathlib import Path

from orion_virt.installer import core, server, server_files

REPO = Path(__file__).resolve().parents[3]


def test_checked_in_server_files_are_what_install_server_writes() -> None:
    for name, attr in server_files.CHECKED_IN.items():
        text = server_files.render(getattr(server_files, attr), server.DEFAULT_PREFIX)
        assert (REPO / "server" / name).read_text() == text, f"server/{name} differs from installer/server_files.py"


def test_server_conf_written_is_the_checked_in_one() -> None:
    assert server_files.SERVER_CONF == (REPO / "server" / "server.conf").read_text()


def test_units_reload_restart_and_start_the_environments_commands() -> None:
    o = server.Options(prefix="/srv/orion", cuda_home="/opt/cuda-13")
    written = {p: (data.decode(), mode) for p, data, mode in server.files(o)}
    assert set(written) == {"/etc/systemd/system/oriond.service", "/etc/systemd/system/orion-controller.service",
                            "/etc/logrotate.d/orion"}
    assert all(mode == 0o644 for _, mode in written.values())
    oriond, _ = written["/etc/systemd/system/oriond.service"]
    ctl, _ = written["/etc/systemd/system/orion-controller.service"]
    assert "ExecStart=/srv/orion/bin/oriond\n" in oriond
    assert "ExecStart=/srv/orion/bin/orion-controller start " in ctl
    assert "Environment=LD_LIBRARY_PATH=/opt/cuda-13/lib64\n" in oriond
    for unit in (oriond, ctl):
        assert "ExecReload=/bin/kill -HUP $MAINPID\n" in unit and "Restart=on-failure\n" in unit
        assert "NoNewPrivileges=yes\n" in unit and "ProtectSystem=full\n" in unit and "@" not in unit
    # what oriond needs: GPUs and /dev/shm devices, pinned memory
    assert "PrivateDevices" not in oriond and "DeviceAllow" not in oriond and "ProtectClock" not in oriond
    assert "LimitMEMLOCK=infinity\n" in oriond and "LogsDirectoryMode=0750\n" in oriond


def test_links_cover_every_command_and_point_into_the_environment() -> None:
    got = dict(server.links("/opt/orion"))
    assert set(got) == {f"/usr/local/bin/{c}" for c in server.COMMANDS}
    assert got["/usr/local/bin/oriond"] == "/opt/orion/bin/oriond"


def test_pip_command_offline_and_no_deps(tmp_path: Path) -> None:
    wheel = tmp_path / "orion_virt-0.1.0-py3-none-any.whl"
    argv = server.pip_argv(server.Options(wheel_dir="/srv/wheels", no_index=True), tmp_path, wheel)
    assert argv[-1] == f"{wheel}[host,cuda]" and "--no-index" in argv
    assert argv[argv.index("--find-links") + 1] == "/srv/wheels"
    assert argv[argv.index("--python") + 1] == str(tmp_path / "bin" / "python")
    bare = server.pip_argv(server.Options(no_deps=True), tmp_path, wheel)
    assert bare[-1] == str(wheel) and "--no-deps" in bare and "--no-index" not in bare
    venv = server.venv_argv(server.Options(python="/usr/bin/python3", system_site_packages=True), tmp_path)
    assert venv == ["/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", str(tmp_path)]


def test_server_modules_stay_out_of_the_client_bundle() -> None:
    files, _ = core.client_files()
    assert not any(f.startswith("installer/server") for f in files)


def test_daemon_reload_only_on_the_running_system(tmp_path: Path) -> None:
    assert not server.systemd_running(core.Target(str(tmp_path)))


def test_a_foreign_prefix_is_refused(tmp_path: Path) -> None:
    (tmp_path / "opt/orion").mkdir(parents=True)
    (tmp_path / "opt/orion/data").write_text("someone's\n")
    lines: list[str] = []
    rc = server.run(server.Options(root=str(tmp_path)), do_uninstall=False, out=lines.append)
    assert rc == 2 and "is not an install-server installation" in lines[-1]
    assert server.run(server.Options(root=str(tmp_path)), do_uninstall=True, out=lines.append) == 2
    assert "no Orion Server installation found in /opt/orion" in lines[-1]


def test_wheel_build_uses_local_setuptools_or_an_isolated_build(tmp_path: Path) -> None:
    o = server.Options(wheel_dir="/srv/wheels", no_index=True)
    local = server.wheel_argv(o, "/src", tmp_path, local_setuptools=True)
    assert "--no-build-isolation" in local and "--no-index" not in local and local[-1] == "/src"
    isolated = server.wheel_argv(o, "/src", tmp_path, local_setuptools=False)
    assert "--no-build-isolation" not in isolated and "--no-index" in isolated
    assert isolated[isolated.index("--find-links") + 1] == "/srv/wheels"
