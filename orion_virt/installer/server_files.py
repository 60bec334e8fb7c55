"""What install-server writes besides the environment: server.conf, the systemd units, the logrotate
file. Standard library only. ``server/`` holds the same files rendered for the default prefix
(``server.conf``, ``oriond.service``, ``orion-controller.service``, ``orion.logrotate``); a unit
test keeps them identical to these strings. ``@PREFIX@`` (the environment, /opt/orion) and
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

DEFAULT_CUDA_HOME = "/usr/local/cuda"

SERVER_CONF = """\
# /etc/orion/server.conf: configuration of the Orion Server (oriond).
# Every value below is the default; change what your deployment needs, then
# sudo systemctl reload oriond: sessions keep running, [server-log] and [server-limits] apply at
# once, and oriond logs each changed key that needs sudo systemctl restart oriond instead.
# Lines starting with '#' or ';' are comments. An unknown section or key is an error, so a typo
# is reported instead of being ignored (on reload: the old settings are kept).
# Command-line flags of oriond override this file.

[server]
    # First TCP port oriond listens on (clients connect here over TCP).
    listen_port = 9960
    # Data-plane address oriond binds, which clients must reach:
    #   local GPU virtualisation with Docker containers: the docker0 gateway, e.g. 172.17.0.1
    #   local GPU virtualisation with KVM VMs: the VMs' virtual gateway, e.g. 33.31.0.1
    #   a GPU pool over the network: this host's Ethernet (or RDMA NIC) address
    bind_addr = 127.0.0.1
    # Instead of bind_addr: bind the address of this interface (e.g. bind_net = virbr0).
    # Set only one of bind_addr and bind_net.
    # bind_net = virbr0
    # Shared-memory acceleration for clients in containers or on this host (same machine only).
    enable_shm = "true"
    # Shared-memory acceleration for clients in QEMU-KVM VMs (ivshmem devices; same machine only).
    enable_kvm = "false"
    # RDMA is not supported by this implementation; keep it false.
    enable_rdma = "false"
    # vGPUs per physical GPU this server offers (also set by the controller's --vgpu).
    vgpu_count = 4
    # Execution backend: auto (cuda when an NVIDIA driver and GPU are present, else sim),
    # cuda, or sim (no GPU: device memory in host RAM, NumPy reference kernels; for tests only).
    backend = auto

[server-log]
    # Directory of server.log and of session/<id>.log (one per application run).
    log_dir = /var/log/orion
    # Write a timestamp with every log line. 0: no, 1: yes.
    log_with_time = 1
    # Print log lines on the screen (the journal under systemd). 0: no, 1: yes.
    log_to_screen = 1
    # Write log lines to files under log_dir. 0: no, 1: yes.
    log_to_file = 1
    # Level of the lines printed on screen: ERROR, WARNING, INFO or DEBUG.
    log_level = INFO
    # Level of the lines written to the files: ERROR, WARNING, INFO or DEBUG.
    file_log_level = INFO

[server-shm]
    # Only used when enable_shm or enable_kvm is true.
    # Where the shared-memory devices (orionsock<N>) live. Clients must use the same path
    # (shm_path_base in client.conf; containers mount their device at the same path).
    shm_path_base = /dev/shm
    # With KVM: the Linux user and group QEMU runs VMs as (owner of the VMs' devices), e.g.
    # shm_user_name = libvirt-qemu
    # shm_group_name = kvm
    # Size of each shared-memory device: 128 MiB by default (e.g. 128, 256M, 1G).
    shm_buffer_size = 128

[controller]
    # Address (HOST:PORT) of the Orion Controller this server registers its GPUs with, e.g.
    # controller_addr = 127.0.0.1:9123
    # While it is not set, oriond runs without a controller (direct mode: clients name it
    # with ORION_SERVER and get what they ask for within this host's GPUs).
    # Key the controller signs allocation tokens with (shared by controller and servers).
    token_key_file = /etc/orion/token.key
    # Key this server signs its registration and heartbeats with (orion-controller --api-key;
    # copy it here with mode 0600).
    api_key_file = /etc/orion/controller.key
    # Where oriond and its session workers record used tokens and revoked allocations.
    token_state_dir = /run/orion/tokens

[server-limits]
    # What one client, or many, may hold of oriond. A client over a limit is refused with an
    # error its application sees (the text names the limit) and oriond logs a line.
    # TCP connections accepted that have not sent their HELLO yet. They are held by oriond
    # itself (no session worker is started before the HELLO has arrived); more are refused.
    max_pending_connections = 64
    # Sessions served at once, over TCP and shared memory together.
    max_sessions = 256
    # TCP sessions, and connections waiting for their HELLO, from one client address.
    max_sessions_per_client = 32
    # Seconds a new connection (or a claimed shared-memory channel) may take to send its HELLO.
    hello_timeout = 10
    # Seconds a session may go without a call before oriond closes it (its device memory and
    # vGPUs are freed). 0: never.
    idle_timeout = 0
    # Direct mode (no controller_addr): count what every session was granted, so that the sum
    # of the sessions' vGPUs never exceeds vgpu_count per GPU nor their memory the GPU's
    # memory; a HELLO asking for more than is left is refused. 0: grant every HELLO what it
    # asks for within one GPU (only where every client is trusted).
    direct_accounting = 1

[throttle]
    # Enforce each vGPU's compute share (ORION_RATIO). 0: no, 1: yes.
    enable_computation_throttle = 1
    # throttle_level (and computation_throttle_mode2) of the Orion documentation's file are
    # accepted so that file loads, but have no effect here: oriond logs once that they are ignored.
    # throttle_level = 100
"""

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

CHECKED_IN = {"server.conf": "SERVER_CONF", "oriond.service": "ORIOND_UNIT",
              "orion-controller.service": "CONTROLLER_UNIT", "orion.logrotate": "LOGROTATE"}
"""server/<name> -> the template it is rendered from (for the default prefix)."""


def render(text: str, prefix: str, cuda_home: str = DEFAULT_CUDA_HOME) -> str:
    """``text`` with its placeholders filled (both paths already checked: no spaces or quotes)."""
    return (text.replace("@HARDENING@", _HARDENING).replace("@PREFIX@", prefix)
            .replace("@CUDA_HOME@", cuda_home))
