"""What install-server writes besides the environment: server.conf, the systemd units, the logrotate
file. Standard library only. ``server/`` holds the same files rendered for the default prefix
(``oriond.service``, ``orion-controller.service``, ``orion.logrotate``); a unit test keeps them
identical to these strings. ``server/server.conf`` is read as it is (one copy: the package's
``installer/server.conf`` is a link to it). ``@PREFIX@`` (the environment, /opt/orion) and
``@CUDA_HOME@`` (/usr/local/cuda, or install-server's CUDA_HOME) are substituted.

Hardening of the units, and what each directive left out would break:

- kept: NoNewPrivileges (oriond runs as root and execs nothing setuid it needs), ProtectSystem=full
  (/usr, /boot, /etc read-only; oriond writes only /var/log/orion, /run/orion and shm_path_base),
  ProtectHome (nothing of oriond is in /home or /root; the CUDA driver's JIT cache, ~/.nv by
  default, is put in /var/cache/orion with CUDA_CACHE_PATH), PrivateTmp (oriond's sockets and devices are in
  /run/orion and /dev/shm, never /tmp), ProtectControlGroups, ProtectKernelTunables,
  RestrictRealtime, LockPersonality, RestrictSUIDSGID.
- left out for oriond: ProtectSystem=strict (a shm_path_base outside /dev/shm, or a token_state_dir
  elsewhere, would become read-only), PrivateDevices (hides /dev/nvidia*, and /dev/shm's
  containers' devices), DevicePolicy/DeviceAllow and ProtectClock (ProtectClock adds a DeviceAllow
  rule, which turns the device list into an allow-list without /dev/nvidia*), ProtectKernelModules
  (libcuda loads nvidia-uvm through nvidia-modprobe on first use), MemoryDenyWriteExecute (the
  CUDA driver's JIT and NumPy need writable executable pages), PrivateUsers and DynamicUser (oriond
  must chown VM devices to shm_user_name and read peers' memory with pidfd_getfd), PrivateNetwork
  (clients reach it over TCP), SystemCallFilter (pidfd_getfd, memfd and ptrace-mode checks).
"""

from __future__ import annotations

from importlib import resources

DEFAULT_CUDA_HOME = "/usr/local/cuda"

SERVER_CONF = resources.files("orion_virt.installer").joinpath("server.conf").read_text()
"""/etc/orion/server.conf as installed: server/server.conf (installer/server.conf links to it in a
checkout; a wheel holds a copy)"""

_HARDENING = """\
# Hardening: what is left out, and why, is in orion_virt/installer/server_files.py.
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes
ProtectControlGroups=yes
ProtectKernelTunables=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
"""

ORIOND_UNIT = """\
# systemd unit of the Orion Server (oriond), written by install-server (from
# orion_virt/installer/server_files.py). Then, as in the Orion documentation:
#   sudo systemctl enable --now oriond
#   sudo systemctl start|stop|restart|status oriond;  sudo journalctl -u oriond
# After editing /etc/orion/server.conf: sudo systemctl reload oriond (sessions keep running;
# oriond logs which changed keys need a restart instead).
# After changing the CUDA paths below: sudo systemctl daemon-reload && sudo systemctl restart oriond
[Unit]
Description=Orion vGPU Server (oriond)
Documentation=file:///etc/orion/server.conf
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
# Where CUDA lives (the cuda backend loads libcuda through cuda-python); edit for your host.
Environment=PATH=@CUDA_HOME@/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Environment=LD_LIBRARY_PATH=@CUDA_HOME@/lib64
# the driver's cache of JIT-compiled kernels (~/.nv is hidden by ProtectHome)
Environment=CUDA_CACHE_PATH=/var/cache/orion/ComputeCache
CacheDirectory=orion
CacheDirectoryMode=0750
# Reads /etc/orion/server.conf (defaults when it is absent); logs to /var/log/orion/server.log
# and /var/log/orion/session/, and to the journal.
ExecStart=@PREFIX@/bin/oriond
# SIGHUP: re-read /etc/orion/server.conf, keep every session
ExecReload=/bin/kill -HUP $MAINPID
LogsDirectory=orion
LogsDirectoryMode=0750
# oriond ends every session (workers, shared-memory channels) on SIGTERM
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=15
Restart=on-failure
RestartSec=2
# pinned host memory for cuMemHostRegister of shared-memory devices
LimitMEMLOCK=infinity
LimitNOFILE=65536
@HARDENING@
[Install]
WantedBy=multi-user.target
"""

CONTROLLER_UNIT = """\
# systemd unit of the Orion Controller, written by install-server (from
# orion_virt/installer/server_files.py):
#   sudo systemctl enable --now orion-controller
# Its settings are the flags below (orion-controller start --help): change them with
#   sudo systemctl edit orion-controller    (an ExecStart= line, then the new ExecStart=...)
# and sudo systemctl restart orion-controller. A reload only logs that (it has no config file).
[Unit]
Description=Orion vGPU Controller (orion-controller)
After=network-online.target
Wants=network-online.target
Before=oriond.service

[Service]
Type=simple
ExecStart=@PREFIX@/bin/orion-controller start --log /var/log/orion/controller.log
ExecReload=/bin/kill -HUP $MAINPID
LogsDirectory=orion
LogsDirectoryMode=0750
KillSignal=SIGTERM
TimeoutStopSec=15
Restart=on-failure
RestartSec=2
# its store (/var/lib/orion/controller.db) and, at first start, the keys and portal password it
# creates in /etc/orion (read-only otherwise under ProtectSystem=full)
StateDirectory=orion
StateDirectoryMode=0750
ReadWritePaths=-/etc/orion
@HARDENING@# no GPU here: no devices beyond /dev/null and the like
PrivateDevices=yes

[Install]
WantedBy=multi-user.target
"""

LOGROTATE = """\
# logrotate of the Orion logs, written by install-server. oriond and orion-controller reopen a log
# file that was moved away at their next line (WatchedFileHandler), so no signal is sent.
# Session logs (one per application run) are not rotated: they are removed 14 days after their
# last line, when server.log is rotated.
/var/log/orion/server.log /var/log/orion/controller.log {
    weekly
    rotate 8
    maxage 90
    compress
    delaycompress
    missingok
    notifempty
    create 0640 root root
    sharedscripts
    postrotate
        find /var/log/orion/session -xdev -type f -name '*.log' -mtime +14 -delete 2>/dev/null || true
    endscript
}
"""

CHECKED_IN = {"oriond.service": "ORIOND_UNIT",
              "orion-controller.service": "CONTROLLER_UNIT", "orion.logrotate": "LOGROTATE"}
"""server/<name> -> the template it is rendered from (for the default prefix)."""


def render(text: str, prefix: str, cuda_home: str = DEFAULT_CUDA_HOME) -> str:
    """``text`` with its placeholders filled (both paths already checked: no spaces or quotes)."""
    return (text.replace("@HARDENING@", _HARDENING).replace("@PREFIX@", prefix)
            .replace("@CUDA_HOME@", cuda_home))
