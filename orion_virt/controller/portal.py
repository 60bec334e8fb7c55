"""The web portal: one self-refreshing HTML page (summary, tasks, nodes with GPU partitioning)."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from .service import Controller

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f0f0f0}
.up{color:#080}.down{color:#b00}.slots{display:flex;gap:2px}
.slot{width:5.5em;height:2.2em;font-size:70%;border:1px solid #999;overflow:hidden;padding:1px}
.used{background:#9cf}.free{background:#efe}
"""


def _t(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _row(cells: list[Any], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def render(c: Controller) -> str:
    s = c.snapshot()
    summ, tasks, nodes = c.summary(s), c.tasks(s), c.nodes(s)
    v = c.version()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='5'><title>Orion Controller</title>",
        f"<style>{_CSS}</style></head><body><h1>Orion Controller</h1>",
        f"<p>data_version={escape(v['data_version'])}, api_version={escape(v['api_version'])}"
        f" &middot; store: {escape(c.store.describe())}</p>",
        "<h2>Summary</h2><table>",
        _row(["vGPUs total", "vGPUs free", "GPUs", "nodes up", "nodes down", "tasks"], "th"),
        _row([summ["total_vgpus"], summ["free_vgpus"], summ["gpus"], summ["nodes_up"],
              summ["nodes_down"], summ["allocations"]]),
        "</table><h2>Tasks</h2><table>",
        _row(["allocation ID", "group", "owner", "started", "lease until", "vGPUs"], "th"),
    ]
    for t in tasks:
        where = "<br>".join(
            escape(f"{p['node_id']} ({p['server']}) GPU {p['gpu_index']} slot {p['slot']}: "
                   f"{p['memory_mib']} MiB, {p['ratio']}%") for p in t["vgpus"])
        parts.append(_row([escape(t["allocation_id"]), escape(t["group_id"]), escape(t["owner"]),
                           _t(t["created_at"]), _t(t["expires_at"]), where]))
    if not tasks:
        parts.append("<tr><td colspan='6'>no running tasks</td></tr>")
    parts.append("</table><h2>Nodes</h2>")
    for n in nodes:
        state = "up" if n["up"] else "down"
        parts.append(f"<h3>{escape(n['node_id'])} <small>{escape(n['address'])}</small> "
                     f"<span class='{state}'>{state}</span> <small>last heartbeat "
                     f"{_t(n['last_heartbeat'])}</small></h3><table>")
        parts.append(_row(["GPU", "name", "memory", "allocated", "ratio", "free vGPUs",
                           "partitioning"], "th"))
        for g in n["gpus"]:
            slots = "".join(
                f"<div class='slot {'used' if sl['allocation_id'] else 'free'}' "
                f"title='{escape(sl['allocation_id'] or 'free')}'>#{sl['slot']}<br>"
                + (escape(f"{sl['memory_mib']}M {sl['ratio']}%") if sl["allocation_id"]
                   else "free") + "</div>" for sl in g["vgpus"])
            parts.append(_row([g["index"], escape(f"{g['name']} {g['uuid']}"),
                               f"{g['memory_mib']} MiB", f"{g['used_memory_mib']} MiB",
                               f"{g['used_ratio']}%", g["free_vgpus"],
                               f"<div class='slots'>{slots}</div>"]))
        parts.append("</table>")
    if not nodes:
        parts.append("<p>no Orion Server has registered yet</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
