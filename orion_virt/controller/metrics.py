"""Prometheus text exposition (format 0.0.4) of the pool, written by hand."""

from __future__ import annotations

from typing import Iterable

from .service import Controller

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: object) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in kv.items()) + "}" if kv else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _family(name: str, kind: str, help_: str,
            samples: Iterable[tuple[dict[str, object], float]]) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    out += [f"{name}{_labels(**lab)} {_num(val)}" for lab, val in samples]
    return out


def render(c: Controller) -> str:
    """One consistent snapshot of the store rendered as metric families."""
    s = c.snapshot()
    summ = c.summary(s)
    nodes = c.nodes(s)
    gpu = [(n, g) for n in nodes for g in n["gpus"]]
    lines: list[str] = []
    lines += _family("orion_vgpus_total", "gauge", "vGPUs on up nodes.",
                     [({}, summ["total_vgpus"])])
    lines += _family("orion_vgpus_free", "gauge",
                     "Default-sized vGPUs that can still be allocated.",
                     [({}, summ["free_vgpus"])])
    lines += _family("orion_allocations", "gauge", "Live allocations (running tasks).",
                     [({}, summ["allocations"])])
    lines += _family("orion_nodes", "gauge", "Registered nodes by state.",
                     [({"state": "up"}, summ["nodes_up"]), ({"state": "down"}, summ["nodes_down"])])
    lines += _family("orion_node_up", "gauge", "1 if the node heartbeats, else 0.",
                     [({"node": n["node_id"], "address": n["address"]}, int(n["up"]))
                      for n in nodes])
    lines += _family("orion_node_last_heartbeat_seconds", "gauge",
                     "Unix time of the node's last heartbeat.",
                     [({"node": n["node_id"]}, n["last_heartbeat"]) for n in nodes])

    def per_gpu(key: str) -> list[tuple[dict[str, object], float]]:
        return [({"node": n["node_id"], "gpu": g["index"], "uuid": g["uuid"]}, g[key])
                for n, g in gpu]

    lines += _family("orion_gpu_memory_mib", "gauge", "Physical GPU memory in MiB.",
                     per_gpu("memory_mib"))
    lines += _family("orion_gpu_memory_allocated_mib", "gauge",
                     "GPU memory held by allocations in MiB.", per_gpu("used_memory_mib"))
    lines += _family("orion_gpu_ratio_allocated_percent", "gauge",
                     "Sum of compute shares held on the GPU.", per_gpu("used_ratio"))
    lines += _family("orion_gpu_vgpus", "gauge", "vGPU slots of the GPU.", per_gpu("vgpu_count"))
    lines += _family("orion_gpu_vgpus_used", "gauge", "vGPU slots held by allocations.",
                     per_gpu("used_vgpus"))
    return "\n".join(lines) + "\n"
