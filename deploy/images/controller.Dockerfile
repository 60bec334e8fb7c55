# orion-virt/controller: the Orion Controller (API, web portal and /metrics on port 9123).
# Its store: embedded SQLite under /var/lib/orion (a volume), or --kv http://ETCD:2379.
# Build from the repository root:  docker build -f deploy/images/controller.Dockerfile -t orion-virt/controller:0.1.0 .
FROM debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY orion_virt /src/orion_virt
RUN python3 -m venv /opt/orion \
    && /opt/orion/bin/pip install --no-cache-dir /src \
    && rm -rf /src
ENV PATH=/opt/orion/bin:$PATH
VOLUME ["/var/lib/orion"]
EXPOSE 9123
ENTRYPOINT ["orion-controller"]
CMD ["start", "--ip", "0.0.0.0", "--port", "9123"]
