# orion-virt/oriond: the Orion Server for a Kubernetes DaemonSet (deploy/k8s/base/oriond.yaml) or
#   docker run --privileged --net host --ipc host --pid host -v /dev/shm:/dev/shm -e BIND_ADDR=... IMAGE
# the [host] extra's libvirt-python is built from its sdist (gcc, pkg-config, libvirt-dev).
# cuda-bindings from PyPI; the NVIDIA driver (libcuda.so.1) comes from the host through the NVIDIA
# container runtime (NVIDIA_DRIVER_CAPABILITIES=compute,utility). Without a GPU, --backend sim.
# Build from the repository root:  docker build -f deploy/images/oriond.Dockerfile -t orion-virt/oriond:0.1.0 .
FROM debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv iproute2 procps ca-certificates \
        gcc pkg-config libvirt-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY orion_virt /src/orion_virt
RUN python3 -m venv /opt/orion \
    && /opt/orion/bin/pip install --no-cache-dir '/src[host,cuda]' \
    && rm -rf /src
ENV PATH=/opt/orion/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY server/entrypoint.sh /usr/local/bin/orion-server-entrypoint.sh
COPY deploy/images/entrypoint.sh /usr/local/bin/entrypoint.sh
RUN chmod 0755 /usr/local/bin/entrypoint.sh /usr/local/bin/orion-server-entrypoint.sh
EXPOSE 9960
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
