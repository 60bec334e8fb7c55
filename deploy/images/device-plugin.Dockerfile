# orion-virt/device-plugin: orion-device-plugin (the entrypoint), orion-node-labeller and
# orion-scheduler-extender (the k8s extra), and install-client with the native client built in,
# which the device plugin's init container installs into the node's /usr/lib/orion.
# Build from the repository root:  docker build -f deploy/images/device-plugin.Dockerfile -t orion-virt/device-plugin:0.1.0 .
FROM debian:12 AS native
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv gcc make libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
# cuda.h from NVIDIA's nvidia-cuda-runtime wheel (headers only; no driver is needed to build)
RUN python3 -m venv /build-venv && /build-venv/bin/pip install --no-cache-dir nvidia-cuda-runtime \
    && make -C orion_virt/client/native OUT=/out PYTHON=/build-venv/bin/python

FROM debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv iproute2 ca-certificates \
        gcc pkg-config libvirt-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY orion_virt /src/orion_virt
RUN python3 -m venv /opt/orion \
    && /opt/orion/bin/pip install --no-cache-dir '/src[host,k8s]' \
    && rm -rf /src
COPY --from=native /out/libcuda.so.1 /out/libnvidia-ml.so.1 /opt/orion/native/
ENV PATH=/opt/orion/bin:$PATH \
    ORION_NATIVE_LIB_DIR=/opt/orion/native
ENTRYPOINT ["orion-device-plugin"]
