"""Presenting a run: the text table, DIR/bench.json and DIR/bench.png (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path

KiB, MiB = 1 << 10, 1 << 20


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= MiB else f"{n >> 10} KiB"


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Aligned columns: the first left-justified, the others right-justified."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return [line(headers), indent + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def text(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    load_end = m.get("loadavg_end", [float("nan")])[0]
    out = [
        (f"orion-bench: oriond on the sim backend; {m['cpus']} CPUs ({m['cpu_model']}), "
         f"{m['implementation']} {m['python']}, {m['system']} {m['kernel']}"),
        (f"load average {m['loadavg_start'][0]:.2f} at start, {load_end:.2f} at end; "
         f"medians over {s['rounds']} rounds (latency), {s['pipelined_rounds']} (pipelined), "
         f"{s['copy_rounds']} (copies); {res.get('elapsed_s', 0):.0f} s"),
        "",
    ]
    null = res.get("null", {})
    if null:
        client = ("the retired Python client (orion_virt.client.driver)" if s.get("client") == "python"
                  else "the native client (libcuda.so.1)")
        out.append(f"Null call: cuCtxSynchronize round trip through {client} "
                   "(floor: 16-byte ping-pong between two processes)")
        rows = []
        for t, label in (("shm", "shm"), ("tcp", "tcp"), ("tcp_same_core", "tcp, one core")):
            if t not in null:
                continue
            n = null[t]
            rows.append([label, _f(n["remote"]["median_us"]), _f(n["remote"]["p99_us"], "{:.1f}"),
                         n["floor_name"], _f(n["floor"]["median_us"]), _f(n["floor"]["p99_us"], "{:.1f}"),
                         _f(n["ratio"], "{:.2f}x")])
            if "spin_floor" in n:
                sp = n["spin_floor"]
                rows.append(["", "", "", "bare spin (context)", _f(sp["median_us"]), _f(sp["p99_us"], "{:.1f}"), ""])
        out += _table(["", "median us", "p99 us", "floor", "median us", "p99 us", "ratio"], rows)
        pl = res.get("placement")
        if pl:
            out.append(f"  client side on CPU {pl['client_cpus']}, oriond and floor peers on CPU {pl['server_cpus']}"
                       " (\"one core\": both on the client's CPU, for context)")
        out.append("")
    pipe = res.get("pipelined", {})
    if pipe:
        out.append("Pipelined calls without reply, counted until a final cuCtxSynchronize")
        rows = []
        names = {"launch": "cuLaunchKernel (fill_u32, n=0)", "memset": "cuMemsetD8Async (16 B)"}
        for t, kinds in pipe.items():
            for k, v in kinds.items():
                rows.append([t, names[k], _f(v["per_s"], "{:,.0f}"), _f(v["issue_per_s"], "{:,.0f}")])
        out += _table(["", "call", "calls/s", "client issue/s"], rows)
        out.append("")
    copy = res.get("copy")
    if copy:
        g, r = copy["gbps"], copy["ratio"]
        for d, name in (("htod", "HtoD"), ("dtoh", "DtoH")):
            out.append(f"{name} throughput, GB/s (ratio: remoted / raw transfer of the same size)")
            headers = ["size", "memcpy"]
            cols: list[tuple[str, str]] = [("memcpy", "")]
            if f"shm_{d}" in g:
                headers += ["raw ring", "shm", "shm/ring"]
                cols += [(f"ring_{d}", ""), (f"shm_{d}", ""), (f"shm_{d}", "ratio")]
            if f"tcp_{d}" in g:
                headers += ["raw socket", "tcp", "tcp/socket"]
                cols += [(f"socket_{d}", ""), (f"tcp_{d}", ""), (f"tcp_{d}", "ratio")]
            rows = []
            for i, size in enumerate(copy["sizes"]):
                row = [_size(size)]
                for key, kind in cols:
                    row.append(_f(r[key][i], "{:.2f}x") if kind == "ratio" else _f(g[key][i]))
                rows.append(row)
            out += _table(headers, rows)
            out.append("")
    sess = res.get("session")
    if sess:
        out.append("Starting a session")
        rows = []
        for t, v in sess["cuinit_ms"].items():
            prog = sess["program_s"].get(t)
            rows.append([t, _f(v["median"], "{:.1f} ms"), _f(prog["median"] * 1e3 if prog else None, "{:.0f} ms")])
        out += _table(["", "cuInit (connect + HELLO)", "deviceQuery.py under orion-run, whole run"], rows)
        if "python_startup_s" in sess:
            out.append(f"  (python -c pass: {sess['python_startup_s'] * 1e3:.0f} ms)")
        out.append("")
    idle = res.get("idle")
    if idle:
        out.append(f"Idle: CPU over {idle['window_s']:.1f} s with {idle.get('sessions', 2)} idle sessions "
                   "(% of one core, summed per role)")
        rows = [[k, _f(v, "{:.2f}%")] for k, v in idle["percent_of_core"].items()]
        rows.append(["oriond total", _f(idle["oriond_total_pct"], "{:.2f}%")])
        out += _table(["process", "CPU"], rows)
        out.append("")
    wake = res.get("wake")
    if wake:
        out.append("First call after an idle time, us (median; floor: the transport's own first round trip "
                   "after the same idle time, its waiters asleep too)")
        rows = []
        for t in wake["remote_us"]:
            for i, gap in enumerate(wake["gaps_s"]):
                rem, flo, warm = wake["remote_us"][t][i], wake["floor_us"][t][i], wake["warm_us"].get(t)
                rows.append([t, f"{gap:g} s", _f(rem, "{:.0f}"), _f(flo, "{:.0f}"),
                             _f(rem / flo if flo else None, "{:.2f}x"), _f(warm, "{:.1f}"),
                             _f(rem / warm if warm else None, "{:.0f}x")])
        out += _table(["", "idle", "first call", "floor", "/floor", "warm call", "/warm"], rows)
        out.append("")
    tg = res.get("targets")
    if tg:
        out.append("Targets")
        rows = [[t["target"], t["shown"], {True: "met", False: "MISSED", None: "not measured"}[t["met"]]]
                for t in tg]
        out += _table(["target", "measured", ""], rows)
    return "\n".join(out)


def write_json(res: dict, path: Path) -> None:
    path.write_text(json.dumps(res, indent=2, sort_keys=False) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    m = res["machine"]
    fig.suptitle(f"orion-bench — {m['cpus']} CPUs {m['cpu_model']}, Python {m['python']}, Linux {m['kernel']} "
                 f"(oriond sim backend)", fontsize=11)

    ax = axes[0][0]
    null = res.get("null", {})
    labels, med, p99, colors = [], [], [], []
    names = {"shm": ("ring ping-pong\n(floor)", "shm\nnull call"),
             "tcp": ("TCP ping-pong\n(floor)", "TCP\nnull call"),
             "tcp_same_core": ("TCP, 1 core\n(floor)", "TCP, 1 core\nnull call")}
    for t, (floor_label, remote_label) in names.items():
        if t not in null:
            continue
        n = null[t]
        if "spin_floor" in n:
            labels.append("bare spin\n(floor)")
            med.append(n["spin_floor"]["median_us"])
            p99.append(n["spin_floor"]["p99_us"])
            colors.append("#bbb")
        labels.append(floor_label)
        med.append(n["floor"]["median_us"])
        p99.append(n["floor"]["p99_us"])
        colors.append("#888")
        labels.append(remote_label)
        med.append(n["remote"]["median_us"])
        p99.append(n["remote"]["p99_us"])
        colors.append("#1f77b4" if t == "shm" else "#ff7f0e")
    if labels:
        x = range(len(labels))
        ax.bar(x, med, color=colors, label="median")
        ax.scatter(x, p99, marker="_", s=300, color="k", label="p99", zorder=3)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("round trip, µs (log)")
        ax.axhline(3.0, color="#1f77b4", ls=":", lw=1, label="shm target 3 µs")
        ax.legend(fontsize=8)
    ax.set_title("Null call (cuCtxSynchronize) vs floors")

    copy = res.get("copy")
    for ax, d, name in ((axes[0][1], "htod", "HtoD"), (axes[0][2], "dtoh", "DtoH")):
        if not copy:
            ax.set_visible(False)
            continue
        sizes = copy["sizes"]
        g = copy["gbps"]
        styles = [("memcpy", "memcpy (NumPy)", "k", "--"), (f"ring_{d}", "raw ring", "#1f77b4", ":"),
                  (f"shm_{d}", f"shm {name}", "#1f77b4", "-"), (f"socket_{d}", "raw socket", "#ff7f0e", ":"),
                  (f"tcp_{d}", f"TCP {name}", "#ff7f0e", "-")]
        for key, label, color, ls in styles:
            if key in g:
                ax.plot(sizes, g[key], ls=ls, color=color, marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [_size(x) for x in sizes], rotation=45, fontsize=7)
        ax.set_ylabel("GB/s")
        ax.set_title(f"{name} throughput")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    ax = axes[1][0]
    pipe = res.get("pipelined", {})
    labels, vals, issue = [], [], []
    for t, kinds in pipe.items():
        for k, v in kinds.items():
            labels.append(f"{t}\n{'launch' if k == 'launch' else 'memsetAsync'}")
            vals.append(v["per_s"] / 1e3)
            issue.append(v["issue_per_s"] / 1e3)
    if labels:
        pos = list(range(len(labels)))
        ax.bar([i - 0.2 for i in pos], vals, 0.4, label="completed (until sync)")
        ax.bar([i + 0.2 for i in pos], issue, 0.4, label="client issue rate", color="#aaa")
        ax.axhline(200, color="r", ls=":", lw=1, label="target 200k/s (shm launches)")
        ax.set_xticks(pos, labels, fontsize=8)
        ax.set_ylabel("thousand calls / s")
        ax.legend(fontsize=8)
    ax.set_title("Pipelined calls without reply")

    ax = axes[1][1]
    sess = res.get("session")
    if sess:
        labels, vals = [], []
        for t, v in sess["cuinit_ms"].items():
            labels.append(f"{t}\ncuInit")
            vals.append(v["median"])
        for t, v in sess["program_s"].items():
            if isinstance(v, dict):
                labels.append(f"{t}\ndeviceQuery")
                vals.append(v["median"] * 1e3)
        if "python_startup_s" in sess:
            labels.append("python -c pass")
            vals.append(sess["python_startup_s"] * 1e3)
        ax.bar(range(len(labels)), vals, color="#2ca02c")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("ms")
    ax.set_title("Session start and a whole trivial program")

    ax = axes[1][2]
    idle = res.get("idle")
    if idle:
        items = list(idle["percent_of_core"].items())
        ax.barh([k for k, _ in items], [v for _, v in items], color="#9467bd")
        ax.set_xlabel("% of one core")
        ax.set_title(f"Idle CPU, {idle.get('sessions', 2)} idle sessions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
