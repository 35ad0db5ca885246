"""`moola label`: the rule labeler (no subcommand, as before) and `moola label serve` (label by eye)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from moola.cli._app import _friendly_errors, console

_OVERRIDES = "moola.label.overrides"


class _LabelGroup(TyperGroup):
    """A group whose first word may be a key=value override instead of a command, so the rule
    labeler's `moola label --store D --out F [key=value ...]` keeps working beside `serve`."""

    # ctx: typer's own (vendored) click Context in typer >= 0.29, click's before: typed Any for both
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # options may follow the overrides (`moola label k=v --store D`), but never a command's name
        ctx.allow_interspersed_args = _first_word(args) not in self.commands
        rest = super().parse_args(ctx, args)
        held = "_protected_args" if hasattr(ctx, "_protected_args") else "protected_args"  # click < 8.2
        words = [*getattr(ctx, held), *ctx.args]
        if words and words[0] not in self.commands:
            ctx.meta[_OVERRIDES] = words
            setattr(ctx, held, [])
            ctx.args = []
            return []
        return rest

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "[OPTIONS]", "[KEY=VALUE]...  |  serve [OPTIONS]"]


def _first_word(args: list[str]) -> str | None:
    """The first argument that is neither an option nor an option's value."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--store", "--out", "--config"):
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            return a
    return None


label_app = typer.Typer(cls=_LabelGroup, invoke_without_command=True, no_args_is_help=True)


@label_app.callback()
@_friendly_errors
def label(
    ctx: typer.Context,
    store: Annotated[Path | None, typer.Option("--store", help="Store with daily bars.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Labels CSV to write.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Labeler config (default configs/labeler.yaml).")
    ] = None,
) -> None:
    """Label 105-bar windows as consolidation / retracement (deterministic rules, with pointers).

    Without a command it runs the rules (key=value arguments override configs/labeler.yaml);
    `moola label serve` opens a page to label windows by eye instead (docs/labeler.md).
    """
    if ctx.invoked_subcommand is not None:
        if store or out or config:
            raise typer.BadParameter(f"give it after `{ctx.invoked_subcommand}`",
                                     param_hint="--store/--out/--config")
        return
    missing = [name for name, v in (("--store", store), ("--out", out)) if v is None]
    if missing:
        raise typer.BadParameter("required (or give a command: serve)", param_hint="/".join(missing))
    assert store is not None and out is not None
    from moola.pipelines.label import run_label

    res = run_label(store, out, config, ctx.meta.get(_OVERRIDES, []))
    console.print(f"{res.n_labels} labeled windows -> {out}: " + ", ".join(
        f"{k} {v} ({100 * v / max(res.n_labels, 1):.0f}%)" for k, v in res.balance.items()))
    console.print(f"unlabeled pool (disjoint in time from every labeled window): {res.pool_size:,} windows")


@label_app.command("serve")
@_friendly_errors
def serve(
    store: Annotated[Path, typer.Option("--store", help="Store with daily bars.")],
    out: Annotated[Path, typer.Option("--out", help="Labels CSV to append to (resumed if it exists).")],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: a free one).")] = 0,
    config: Annotated[
        Path | None, typer.Option("--config", help="Labeler config: window length, dates, feature set.")
    ] = None,
    stride: Annotated[
        int | None, typer.Option("--stride", help="Bars between candidate windows of a symbol "
                                                 "(default: the window length, no overlap).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the order windows are shown in.")] = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value labeler config overrides")] = None,
) -> None:
    """Label windows by eye: a local page with a candlestick chart; every label is saved at once."""
    from moola.pipelines.label_serve import LabelServer, LabelSession, skips_path

    session = LabelSession(store, out, config, overrides or [], stride=stride, seed=seed)
    st = session.state()
    try:
        server = LabelServer(session, port=port).start()
    except OSError as e:
        raise typer.BadParameter(f"cannot listen on 127.0.0.1:{port} ({e.strerror})",
                                 param_hint="--port") from None
    console.print(f"{st['labeled']} of {st['total']} windows labeled, {st['skipped']} skipped "
                  f"-> {escape(str(out))} (skips: {escape(str(skips_path(out)))})")
    console.print(f"labeling page: [bold]{server.url}[/]   (Ctrl-C to stop)", soft_wrap=True)
    stop = threading.Event()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    st = session.state()
    console.print(f"stopped: {st['labeled']} of {st['total']} windows labeled -> {escape(str(out))}")
