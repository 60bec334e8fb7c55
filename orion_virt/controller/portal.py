"""The web portal: one self-refreshing HTML page (summary, tasks, nodes with GPU partitioning).

Everything shown comes from the pool as ``Controller`` sees it; every client- or server-asserted
text (owner, group, command line, node id, GPU name) is HTML-escaped. No script, no external
fetch: the utilisation graphs are inline SVG.
"""

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
.used{background:#9cf}.free{background:#efe}.unavailable{background:#ddd;color:#666}
.slot.down{background:#fcc}.cmd{font-family:monospace;font-size:85%;max-width:40em;word-break:break-all}
svg.util{background:#fafafa;border:1px solid #ccc}
"""

KIND_LABEL = {"host": "host", "vm": "VM", "container": "container"}
_W, _H, _WINDOW = 360, 60, 3600.0


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
        _row(["allocation ID", "group", "owner", "command line", "started", "lease until",
              "vGPUs"], "th"),
    ]
    for t in tasks:
        where = "<br>".join(
            escape(f"{p['node_id']} ({p['server']}) GPU {p['gpu_index']} slot {p['slot']}: "
                   f"{p['memory_mib']} MiB, {p['ratio']}%") for p in t["vgpus"])
        parts.append(_row([escape(t["allocation_id"]), escape(t["group_id"]), escape(t["owner"]),
                           f"<span class='cmd'>{escape(t['cmdline'])}</span>",
                           _t(t["created_at"]), _t(t["expires_at"]), where]))
    if not tasks:
        parts.append("<tr><td colspan='7'>no running tasks</td></tr>")
    parts.append("</table><h2>Nodes</h2>")
    now = c.clock()
    for n in nodes:
        state = "up" if n["up"] else "down"
        kind = KIND_LABEL.get(n["kind"], n["kind"])
        parts.append(f"<h3 class='node' data-node='{escape(n['node_id'])}'>"
                     f"<span class='kind'>{escape(kind)}</span> {escape(n['node_id'])} "
                     f"<small>{escape(n['address'])}</small> "
                     f"<span class='{state}'>{state}</span> <small>last heartbeat "
                     f"{_t(n['last_heartbeat'])}</small></h3><table>")
        parts.append(_row(["GPU", "name", "memory", "allocated", "ratio", "free vGPUs",
                           "partitioning", "last hour"], "th"))
        for g in n["gpus"]:
            parts.append(_row([g["index"], escape(f"{g['name']} {g['uuid']}"),
                               f"{g['memory_mib']} MiB", f"{g['used_memory_mib']} MiB",
                               f"{g['used_ratio']}%", g["free_vgpus"],
                               f"<div class='slots'>{''.join(map(_slot, g['vgpus']))}</div>",
                               _graph(g["utilisation"], now)]))
        parts.append("</table>")
    if not nodes:
        parts.append("<p>no Orion Server has registered yet</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _slot(sl: dict[str, Any]) -> str:
    st = sl["state"]
    label = (f"{sl['memory_mib']}M {sl['ratio']}%" if st == "used" else st)
    title = sl["allocation_id"] or st
    return (f"<div class='slot {st}' data-state='{st}' title='{escape(title)}'>#{sl['slot']}<br>"
            f"{escape(label)}</div>")


def _graph(samples: list[dict[str, float]], now: float) -> str:
    """The last hour as an inline SVG: allocated memory (blue) and compute share (orange),
    0..100 % bottom to top, now at the right edge."""
    def points(key: str) -> str:
        return " ".join(f"{_W * (1 - (now - x['t']) / _WINDOW):.1f},"
                        f"{_H * (1 - x[key]):.1f}" for x in samples)

    last = samples[-1] if samples else None
    head = (f"<svg class='util' width='{_W}' height='{_H}' viewBox='0 0 {_W} {_H}' "
            f"data-samples='{len(samples)}' role='img'>")
    if last is None:
        return (head + "<title>no utilisation samples yet</title><text x='6' y='34' "
                "font-size='11' fill='#888'>no samples yet</text></svg>")
    title = (f"last hour: {len(samples)} samples; now memory {last['memory']:.0%}, "
             f"compute {last['compute']:.0%}")
    return (head + f"<title>{escape(title)}</title>"
            f"<polyline class='memory' fill='none' stroke='#36c' stroke-width='1.5' "
            f"points='{points('memory')}'/>"
            f"<polyline class='compute' fill='none' stroke='#e80' stroke-width='1.5' "
            f"points='{points('compute')}'/></svg>")
