"""orion-bench: measure the remoting hot path against the floors of its transports."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import version_option


def _transports(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in names if t not in ("shm", "tcp")]
    if bad or not names:
        raise click.BadParameter(f"expected a comma-separated list of shm and tcp, got {value!r}")
    return tuple(dict.fromkeys(names))


def _client(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value.strip().lower() != "native":
        raise click.BadParameter(f"{value!r}: the Python client was retired; the native client is the only one")
    return "native"


@version_option("orion-bench")
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/bench"),
              show_default=True, help="Directory for bench.json and bench.png.")
@click.option("--quick", is_flag=True, help="Fewer rounds, fewer and smaller sizes (about half a minute).")
@click.option("--transports", default="shm,tcp", show_default=True, callback=_transports,
              help="Transports to measure: shm, tcp or both.")
@click.option("--rounds", type=click.IntRange(1, 100), help="Rounds of the latency comparison (default 5, quick 3).")
@click.option("--idle-seconds", type=click.FloatRange(0.1, 600), help="Idle-CPU window (default 5 s, quick 2 s).")
@click.option("--native", is_flag=True,
              help="On a GPU host: oriond on the cuda backend, and the same operations natively "
                   "(cuda-python, no orion_virt), over shm and over TCP; writes OUT/native.json and "
                   "OUT/native.png.")
@click.option("--backend", type=click.Choice(["cuda", "sim"]), default="cuda", show_default=True,
              help="With --native: oriond's backend (sim checks the plumbing; no native column).")
@click.option("--client", default="native", show_default=True, callback=_client,
              help="The client measured against the floors: the native client's libcuda.so.1 "
                   "(make native), the only one (the Python client was retired).")
@click.option("--keep", "keep_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep oriond's and the clients' logs in this directory instead of a temporary one.")
def main(out_dir: Path, quick: bool, transports: tuple[str, ...], rounds: int | None,
         idle_seconds: float | None, native: bool, backend: str, client: str, keep_dir: Path | None) -> None:
    """Start an oriond (sim backend, temporary shared-memory device, loopback port) and measure,
    in one run and side by side with the floors of each transport: null-call latency, pipelined
    calls, HtoD/DtoH throughput, session start, and oriond's idle CPU.

    Prints a table with each target marked met or missed, and writes OUT/bench.json and
    OUT/bench.png. Numbers are medians over rounds; on a small shared machine run it when it is
    otherwise quiet.
    """
    if native:
        _native(out_dir, quick, backend, keep_dir)
        return
    from ..bench.report import plot, text, write_json
    from ..bench.run import Settings, run_bench

    base = Settings.quick() if quick else Settings()
    kw: dict[str, object] = {"transports": transports}
    if rounds is not None:
        kw["rounds"] = rounds
    if idle_seconds is not None:
        kw["idle_s"] = idle_seconds
    import dataclasses

    settings = dataclasses.replace(base, **kw)  # type: ignore[arg-type]
    try:
        res = run_bench(settings, keep_dir=keep_dir)
    except (RuntimeError, OSError) as e:
        click.echo(f"orion-bench: {e}", err=True)
        sys.exit(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(res, out_dir / "bench.json")
    plot(res, out_dir / "bench.png")
    click.echo(text(res))
    click.echo(f"\nwrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'}")


def _native(out_dir: Path, quick: bool, backend: str, keep_dir: Path | None) -> None:
    import json

    from ..bench.compare import CompareSettings, plot_compare, run_compare, text_compare

    settings = CompareSettings.quick(backend) if quick else CompareSettings(backend)
    try:
        res = run_compare(settings, keep_dir)
    except (RuntimeError, OSError) as e:
        click.echo(f"orion-bench: {e}", err=True)
        sys.exit(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "native.json").write_text(json.dumps(res, indent=1))
    plot_compare(res, out_dir / "native.png")
    click.echo(text_compare(res))
    click.echo(f"\nwrote {out_dir / 'native.json'} and {out_dir / 'native.png'}")
