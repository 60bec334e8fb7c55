# orion-virt/client: a base image for applications on Orion vGPUs. install-client has put the
# client runtime into /usr/lib/orion and the native client there as the system's libcuda.so.1
# (ldconfig), so CUDA C/C++ programs, NVIDIA's runtime and cuda-python use vGPUs once ORION_VGPU is
# set (the device plugin sets it, with ORION_CONTROLLER and the shared-memory device). No NVIDIA
# driver is in it, nor needed. Build FROM this image and add your application; the example Pod
# (deploy/k8s/example-client) runs /usr/share/orion/examples/deviceQuery.py and orion-smi.
# Build from the repository root:  docker build -f deploy/images/client.Dockerfile -t orion-virt/client:0.1.0 .
FROM debian:12 AS native
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv gcc make libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN python3 -m venv /build-venv && /build-venv/bin/pip install --no-cache-dir nvidia-cuda-runtime \
    && make -C orion_virt/client/native OUT=/out PYTHON=/build-venv/bin/python

FROM debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY orion_virt /src/orion_virt
COPY --from=native /out/libcuda.so.1 /out/libnvidia-ml.so.1 /opt/orion-native/
# install-client from a throw-away venv; it installs for the system's /usr/bin/python3
RUN python3 -m venv /tmp/installer && /tmp/installer/bin/pip install --no-cache-dir /src \
    && ORION_NATIVE_LIB_DIR=/opt/orion-native /tmp/installer/bin/install-client -q -d /usr/lib/orion \
    && rm -rf /tmp/installer /src /opt/orion-native
# cuda-python for the example (and for cuda-python applications); the .pth of install-client
# activates the Orion client for it when ORION_VGPU is set
RUN pip install --no-cache-dir --break-system-packages cuda-bindings
COPY examples /usr/share/orion/examples
CMD ["python3", "/usr/share/orion/examples/deviceQuery.py"]
