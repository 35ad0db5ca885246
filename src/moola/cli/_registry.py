"""`moola promote` and `moola registry list|show|rollback`: gates, then MLflow's model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from moola.cli._app import _friendly_errors, console, err

registry_app = typer.Typer(help="Registered models (MLflow): list, show, roll back.", no_args_is_help=True)


def _gate_table(results: list, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("gate", "required", "measured", "result", "margin", "note"):
        t.add_column(col, justify="right" if col == "margin" else "left", overflow="fold")
    for r in results:
        margin = "-" if r.margin is None else f"{r.margin:+.4g}"
        t.add_row(escape(r.gate), escape(r.required), escape(r.measured),
                  "[green]pass[/]" if r.passed else "[bold red]FAIL[/]", margin, escape(r.note))
    return t


def promote_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A `moola train` run directory.")],
    gates: Annotated[Path, typer.Option("--gates", help="Gates YAML (configs/gates_default.yaml, ...).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Registered model name (default: from the manifest, "
                                 "e.g. direction-BTCUSD-1m-h1).")
    ] = None,
    search: Annotated[
        list[Path] | None, typer.Option("--search", help="Folder whose run directories are checked for "
                                        "the same test segment (repeatable; default: the run's parent "
                                        "and grandparent).")
    ] = None,
) -> None:
    """Check a run against gates; when every gate passes, register it and make it the champion.
    Exit code 1 when a gate fails (nothing is registered)."""
    from moola.registry import promote, read_gates
    from moola.tracking import tracking_uri

    res = promote(run_dir, read_gates(gates), gates_file=gates, name=name,
                  search=list(search) if search else None)
    console.print(_gate_table(res.results, f"gates {gates} on {run_dir}"))
    if res.segment is not None:
        d = res.segment.deflated
        dsr = "not measured" if d is None else f"{d.probability:.3f} over {d.n_trials} trial(s)"
        console.print(f"{escape(res.segment.summary())}; deflated Sharpe probability {dsr}",
                      highlight=False, soft_wrap=True)
    if res.multiple_testing:
        err.print(f"[bold yellow]warning:[/] {escape(res.multiple_testing)}", highlight=False, soft_wrap=True)
    if not res.passed:
        parts = [f"{r.gate} ({r.measured}, required {r.required}"
                 + (f", margin {r.margin:+.4g})" if r.margin is not None else ")") for r in res.failed]
        err.print(f"[bold red]refused:[/] {len(res.failed)} of {len(res.results)} gate(s) failed: "
                  f"{escape('; '.join(parts))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    prev = f"; version {res.previous} is now alias 'previous'" if res.previous else ""
    console.print(f"promoted: {escape(res.name)} version {res.version} is the champion{prev}",
                  highlight=False)
    console.print(f"load it as models:/{escape(res.name)}@champion (tracking store {escape(tracking_uri())})",
                  highlight=False, soft_wrap=True)


@registry_app.command("list")
@_friendly_errors
def registry_list() -> None:
    """Registered models with their latest version and aliases."""
    from moola.registry import list_models
    from moola.tracking import tracking_uri

    models = list_models()
    console.print(f"tracking store: {escape(tracking_uri())}", highlight=False, soft_wrap=True)
    if not models:
        console.print("no registered models yet: `moola promote RUN_DIR --gates FILE` registers one")
        return
    t = Table(title=f"{len(models)} registered model(s)", title_justify="left")
    for col in ("name", "versions", "latest", "aliases", "champion feature set"):
        t.add_column(col, overflow="fold")
    for m in models:
        champ = next((v for v in m.versions if "champion" in v.aliases), None)
        t.add_row(escape(m.name), str(len(m.versions)), m.latest or "-",
                  _aliases(m.aliases) or "-",
                  escape(champ.tags.get("moola.feature_set", "-")) if champ else "-")
    console.print(t)


def _aliases(aliases: dict[str, str]) -> str:
    return ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items()))


@registry_app.command("show")
@_friendly_errors
def registry_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME/VERSION (models:/ optional).")],
) -> None:
    """Versions, aliases, tags and artifact location of a registered model (or one version)."""
    from moola.registry import show_model

    info, one = show_model(ref)
    console.print(f"[bold]{escape(info.name)}[/]: {len(info.versions)} version(s); aliases "
                  + escape(_aliases(info.aliases) or "none"),
                  highlight=False)
    t = Table(title="versions, newest first", title_justify="left")
    for col in ("version", "aliases", "created (UTC)", "promoted by", "gates file", "rolled back",
                "artifacts"):
        t.add_column(col, overflow="fold")
    for v in info.versions:
        t.add_row(v.version, ", ".join(v.aliases) or "-", f"{v.created:%Y-%m-%d %H:%M:%S}",
                  escape(v.tags.get("moola.promoted_by", "-")), escape(v.tags.get("moola.gates_file", "-")),
                  escape(v.tags.get("moola.rolled_back", "-")), escape(v.source))
    console.print(t)
    for v in [one] if one is not None else []:
        tags = Table(title=f"version {v.version} tags", title_justify="left")
        tags.add_column("tag", overflow="fold")
        tags.add_column("value", overflow="fold")
        for k, val in sorted(v.tags.items()):
            tags.add_row(escape(k), escape(val))
        console.print(tags)
        console.print(f"artifact location: {escape(v.source)}", highlight=False, soft_wrap=True)
        console.print(f"promotion run: {v.run_id}", highlight=False)


@registry_app.command("rollback")
@_friendly_errors
def registry_rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
) -> None:
    """Move the champion alias back to the previous version (the rolled-back one is tagged)."""
    from moola.registry import rollback

    was, now = rollback(name)
    console.print(f"{escape(name)}: champion moved from version {was} back to version {now} "
                  f"(version {was} is tagged moola.rolled_back)", highlight=False)


def register(app: typer.Typer) -> None:
    """Adds ``moola promote`` and ``moola registry`` to ``app``."""
    app.command("promote")(_friendly_errors(promote_cmd))
    app.add_typer(registry_app, name="registry")
