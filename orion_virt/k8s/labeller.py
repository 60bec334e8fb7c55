"""The node labeller: ``ORION_BIND_ADDR=<address>`` on this Kubernetes node, the address being the
IPv4 address of the configured interface (``bind_net``, e.g. ``eth0``) found with pyroute2, as the
seeds' ``orion-helper`` does (``kubectl label nodes <node> ORION_BIND_ADDR=10.10.50.100`` by
hand otherwise). Talks to the API server through the ``kubernetes`` client package: in a Pod with
its service account (in-cluster config), else a kubeconfig, else ``--api-server`` and a token.

It runs as a DaemonSet container (``NODE_NAME`` from the downward API ``spec.nodeName``); it
labels once the interface has an address (``Waiting for network interface eth0`` until then),
then checks again every ``interval`` seconds and patches again when the address changed. API
errors are logged with what they mean (403: the service account may not patch nodes) and retried
with a bounded backoff.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .common import MSG_WAIT_IFACE, Backoff, pyroute2_addr

log = logging.getLogger("orion.k8s.labeller")

LABEL = "ORION_BIND_ADDR"


@dataclass
class LabellerOptions:
    node_name: str
    interface: str
    api_server: str | None = None
    token: str | None = None
    kubeconfig: str | None = None
    insecure: bool = False
    interval: float = 60.0
    backoff_initial: float = 2.0
    backoff_max: float = 60.0
    label: str = LABEL


def api_client(opts: LabellerOptions) -> Any:
    """A ``kubernetes.client.CoreV1Api``: explicit server, else in-cluster, else kubeconfig."""
    from kubernetes import client, config  # the k8s extra

    if opts.api_server:
        kw: dict[str, Any] = {"host": opts.api_server.rstrip("/")}
        if opts.token:
            kw.update(api_key={"authorization": opts.token}, api_key_prefix={"authorization": "Bearer"})
        cfg = client.Configuration(**kw)
        cfg.verify_ssl = not opts.insecure
        return client.CoreV1Api(client.ApiClient(cfg))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=opts.kubeconfig)
    return client.CoreV1Api()


def label_body(label: str, address: str) -> dict[str, Any]:
    return {"metadata": {"labels": {label: address}}}


def explain(e: Exception) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", "") or ""
    if status == 403:
        return f"403 {reason}: the service account may not patch nodes (ClusterRole: nodes get, patch)"
    if status == 404:
        return f"404 {reason}: no such node (set NODE_NAME from spec.nodeName)"
    if status == 401:
        return f"401 {reason}: not authenticated to the API server"
    if status:
        return f"HTTP {status} {reason}"
    return f"{type(e).__name__}: {e}"


class Labeller:
    def __init__(self, opts: LabellerOptions, api: Any = None,
                 iface_addr: Callable[[str], str] | None = None) -> None:
        self.opts = opts
        self._api = api
        self.iface_addr = iface_addr or pyroute2_addr
        self.stop_event = threading.Event()
        self.labelled: str | None = None

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = api_client(self.opts)
        return self._api

    def once(self) -> bool:
        """One attempt: discover, patch when needed. True on success (or nothing to do)."""
        try:
            addr = self.iface_addr(self.opts.interface)
        except ModuleNotFoundError:
            raise
        except Exception as e:  # HostError, pyroute2 errors
            log.warning("%s (%s)", MSG_WAIT_IFACE.format(name=self.opts.interface), e)
            return False
        if addr == self.labelled:
            return True
        try:
            self.api.patch_node(self.opts.node_name, label_body(self.opts.label, addr))
        except ModuleNotFoundError:
            raise
        except Exception as e:  # ApiException, urllib3 errors, config errors
            log.warning("cannot label node %s %s=%s: %s", self.opts.node_name, self.opts.label, addr, explain(e))
            return False
        log.info("labelled node %s %s=%s (interface %s)", self.opts.node_name, self.opts.label, addr,
                 self.opts.interface)
        self.labelled = addr
        return True

    def run(self, once: bool = False) -> int:
        import kubernetes  # noqa: F401  (the k8s extra: missing, say so at once, not in every retry)

        b = Backoff(self.opts.backoff_initial, self.opts.backoff_max)
        while not self.stop_event.is_set():
            if self.once():
                b.reset()
                if once:
                    return 0
                delay = self.opts.interval
            else:
                delay = b.next()
            if self.stop_event.wait(delay):
                break
        return 0 if self.labelled else 1

    def stop(self) -> None:
        self.stop_event.set()
