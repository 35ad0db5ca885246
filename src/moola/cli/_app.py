"""Typer application. Exit codes: 0 ok, 1 findings under --strict (or a refused promotion, a failed
sweep run), 2 bad input, usage or environment (docs/errors.md), 3 a bug."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from moola import __version__

app = typer.Typer(
    name="moola",
    help="Market data to trained, honestly evaluated and served sequence models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Ingest, validate and fetch market data.", no_args_is_help=True)
features_app = typer.Typer(help="List and build named feature sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

console = Console(width=None if Console().is_terminal else 120)
err = Console(stderr=True, width=None if Console().is_terminal else 120)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly_errors(fn: F) -> F:
    """Every foreseeable failure ends with one red line (file, key, what is wrong) and exit code 2;
    a bug with its traceback, a request to report it and exit code 3 (docs/errors.md). No text
    printed here shows a URL's password."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rich.markup import escape

        from moola.cli._errors import BUG_EXIT, USER_EXIT, bug_report, user_message

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise  # exit codes and usage errors (BadParameter: exit 2) are typer's to print
        except Exception as e:
            msg = user_message(e)
            if msg is None:
                err.print(escape(bug_report(e)), highlight=False, soft_wrap=True)
                raise typer.Exit(BUG_EXIT) from None
            # messages quote file contents and paths: escape them so rich shows "[x]" verbatim
            err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
            raise typer.Exit(USER_EXIT) from None

    wrapper.__moola_friendly_errors__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"moola {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """moola: market data -> features -> windows -> models, without look-ahead."""
    import warnings

    from moola._warnings import GuardWarning

    # the trainer prints guard warnings itself, in red; don't print them twice
    warnings.simplefilter("ignore", GuardWarning)


# ----------------------------------------------------------------------------- data


def _report_table(title: str, report: Any, *, max_rows: int = 40) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("reason", "symbol", "count", "action", "first example"):
        t.add_column(col, justify="right" if col == "count" else "left")
    frame = report.frame()
    for rec in frame.head(max_rows).iter_rows(named=True):
        t.add_row(rec["reason"], rec["symbol"], str(rec["count"]), rec["action"], rec["example"])
    if frame.height > max_rows:
        t.add_row("…", f"{frame.height - max_rows} more rows in the JSON", "", "", "")
    return t


def _totals_table(title: str, report: Any) -> Table | str:
    """The reasons that found something, with what was done; a clean report says so in one line."""
    from moola.data import EXPLAIN, Reason

    if not report.has_findings:
        return f"{title}: no findings ({len(Reason)} reasons checked; `moola data policies` lists them)"
    t = Table(title=title, title_justify="left",
              caption=f"no findings for the other reasons of the {len(Reason)} checked",
              caption_justify="left")
    t.add_column("reason")
    t.add_column("rows", justify="right")
    t.add_column("symbols", justify="right")
    t.add_column("action")
    t.add_column("meaning")
    frame = report.frame()
    for reason in Reason:
        sub = frame.filter(frame["reason"] == str(reason))
        n = int(sub["count"].sum()) if sub.height else 0
        if n:
            t.add_row(str(reason), f"{n:,}", str(sub.height), ",".join(sorted(set(sub["action"].to_list()))),
                      EXPLAIN[reason])
    return t


PolicyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--policy", help="reason=action overrides, e.g. gap=fill, ohlc_inconsistent=drop "
        "(see `moola data policies`).",
    ),
]


@data_app.command("ingest")
@_friendly_errors
def data_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories of per-symbol files.")],
    store: Annotated[Path, typer.Option("--store", help="Store directory (created if missing).")],
    format: Annotated[
        str, typer.Option("--format", help="auto|yahoo|binance|kraken|coinbase|freqtrade|generic")
    ] = "auto",
    symbol: Annotated[
        str | None, typer.Option("--symbol", help="Symbol for files without one.")
    ] = None,
    timeframe: Annotated[
        str | None, typer.Option("--timeframe", help="1m|5m|15m|1h|4h|1d (default: inferred).")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Generic mapping: ts=time,open=o,... (names or positions)."),
    ] = None,
    policy: PolicyOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on any finding.")] = False,
    delimiter: Annotated[
        str | None,
        typer.Option("--delimiter", help="CSV field separator: , ; tab | or one character "
                     "(default: detected from the first lines)."),
    ] = None,
) -> None:
    """Read exports into the canonical store; validates first, writes atomically."""
    from moola.pipelines.data import run_ingest

    res = run_ingest(paths, store, fmt=format, symbol=symbol, timeframe=timeframe,
                     columns=columns, policy=policy or [], delimiter=delimiter)
    fmts = sorted({str(r.format) for r in res.files})
    console.print(f"read {len(res.files)} file(s) \\[{', '.join(fmts)}]")
    findings = False
    for tf, rep in res.reports.items():
        w = res.writes[tf]
        console.print(
            f"[bold]{tf.value}[/]: {rep.rows_in} rows in, {rep.rows_out} valid; store: "
            f"{len(w.added)} partition(s) added, {len(w.updated)} updated, "
            f"{len(w.unchanged)} unchanged; {w.rows_new} new rows, {w.rows_replaced} replaced"
        )
        console.print(_totals_table(f"validation ({tf.value})", rep))
        findings |= rep.has_findings
    if strict and findings:
        raise typer.Exit(1)


@data_app.command("validate")
@_friendly_errors
def data_validate(
    store: Annotated[Path, typer.Option("--store", help="Store directory.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Report path (default STORE/validation.json).")
    ] = None,
    policy: PolicyOpt = None,
    details: Annotated[bool, typer.Option("--details", help="Print per-symbol rows.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on any finding.")] = False,
) -> None:
    """Count every wart per symbol and reason (rows dropped at ingest included)."""
    from moola.pipelines.data import run_validate

    res = run_validate(store, json_out=json_out, policy=policy or [])
    findings = False
    for tf, rep in res.reports.items():
        title = f"validation of {store} ({tf.value}, {rep.rows_out} bars)"
        console.print(_totals_table(title, rep))
        if details:
            console.print(_report_table("per symbol", rep))
        tot = rep.totals()
        dups = tot.get("duplicate_identical", 0) + tot.get("duplicate_conflicting", 0)
        console.print(
            f"all-null rows: {tot.get('all_null', 0)}; duplicate keys: {dups} "
            f"({tot.get('duplicate_conflicting', 0)} conflicting)"
        )
        findings |= rep.has_findings
    console.print(f"report: {res.json_path}")
    if strict and findings:
        raise typer.Exit(1)


@data_app.command("policies")
@_friendly_errors
def data_policies() -> None:
    """Show every validation reason, its default action and the allowed ones."""
    from moola.data import ALLOWED, DEFAULT_POLICY, EXPLAIN

    t = Table()
    for c in ("reason", "default", "allowed", "meaning"):
        t.add_column(c)
    for r, allowed in ALLOWED.items():
        t.add_row(str(r), str(DEFAULT_POLICY[r]), "|".join(allowed), EXPLAIN[r])
    console.print(t)


def _parse_when(s: str | None) -> datetime | None:
    if s is None:
        return None
    d = datetime.fromisoformat(s)
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


@data_app.command("fetch")
@_friendly_errors
def data_fetch(
    exchange: Annotated[str, typer.Option("--exchange", help="ccxt exchange id, e.g. kraken.")],
    symbol: Annotated[str, typer.Option("--symbol", help="Market, e.g. BTC/USD.")],
    store: Annotated[Path, typer.Option("--store", help="Store directory.")],
    timeframe: Annotated[str, typer.Option("--timeframe", help="1m|5m|15m|1h|4h|1d")] = "1m",
    since: Annotated[str | None, typer.Option("--since", help="ISO time (UTC if naive).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time, exclusive.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Candles per request.")] = 1000,
) -> None:
    """Download candles through ccxt with pagination, rate limits and resume."""
    from moola.pipelines.data import run_fetch

    res = run_fetch(exchange, symbol, store, timeframe=timeframe, since=_parse_when(since),
                    until=_parse_when(until), limit=limit)
    console.print(f"{res.candles} candles in {res.requests} request(s) -> {store}")


# ------------------------------------------------------------------------- features


@features_app.command("list")
@_friendly_errors
def features_list(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the full feature table.")
    ] = False,
) -> None:
    """List feature sets (and, with --markdown, every feature's formula and look-back)."""
    from moola.features import feature_table_markdown, list_feature_sets

    if markdown:
        console.print(feature_table_markdown(), markup=False, highlight=False)
        return
    t = Table()
    for c in ("set", "features", "max look-back", "kind", "description"):
        t.add_column(c)
    for fs in list_feature_sets():
        t.add_row(fs.name, str(len(fs.specs)), str(max(s.lookback for s in fs.specs)),
                  fs.kind, fs.description)
    console.print(t)


@features_app.command("build")
@_friendly_errors
def features_build(
    set_name: Annotated[str, typer.Option("--set", help="Feature set name (moola features list).")],
    store: Annotated[Path, typer.Option("--store", help="Store directory.")],
    out: Annotated[Path, typer.Option("--out", help="Output Parquet file.")],
    timeframe: Annotated[str | None, typer.Option("--timeframe")] = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", help="Comma-separated subset.")
    ] = None,
    align: Annotated[
        str | None, typer.Option("--align", help="alpha158: bars (default) or calendar (Qlib's).")
    ] = None,
) -> None:
    """Compute a feature set over the store: float32 Parquet + schema hash sidecar."""
    import time

    from moola.pipelines.data import run_features_build

    t0 = time.perf_counter()
    with console.status(f"building {set_name}"):
        fm = run_features_build(store, set_name, out, timeframe=timeframe,
                                symbols=symbols.split(",") if symbols else None, align=align)
    console.print(
        f"{set_name}: {fm.rows} rows x {fm.features} features "
        f"(float32) in {time.perf_counter() - t0:.1f}s -> {out}; schema hash {fm.schema_hash}"
    )
    from moola.features import compiled_kernels, get_feature_set

    jit = [m for m, build in compiled_kernels(get_feature_set(set_name)).items() if build is None]
    if jit:
        console.print(f"{', '.join(jit)} ran through Numba's JIT (~0.8 s of start-up a run): "
                      "`moola features compile` builds it ahead of time")


@features_app.command("compile")
@_friendly_errors
def features_compile() -> None:
    """Build the feature kernels ahead of time (C compiler needed; ``make install`` runs it):
    a build then skips Numba's ~0.8 s start and 170 MB. Without it they run through the JIT."""
    import time

    from moola.features import compile_kernels

    t0 = time.perf_counter()
    for built in compile_kernels():
        state = "built" if built.built else "up to date"
        console.print(f"{built.module}: {state} -> {built.path}")
    console.print(f"in {time.perf_counter() - t0:.1f}s")


# ----------------------------------------------------------------------------- demo


@app.command("demo")
@_friendly_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
    data_dir: Annotated[
        Path | None, typer.Option("--data", help="Bundled data directory (default: the repo's).")
    ] = None,
) -> None:
    """Every journey on the bundled real data: ingest and validate, features, a direction model,
    pattern labels, a pretraining sweep, tuning, the OOF pretraining verdict, promotion to an
    ensemble, the dry-run runtime and cross-sectional ranking; one report per step."""
    from moola.demo import run_demo

    run_demo(out, data_dir=data_dir, console=console)


# --------------------------------------------------------------------------- models

models_app = typer.Typer(help="Model presets.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _parse_shape(s: str) -> tuple[int, int]:
    try:
        t, f = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"'{s}' is not TxF, e.g. 105x4") from None
    return t, f


@models_app.command("list")
@_friendly_errors
def models_list(
    input_shape: Annotated[str, typer.Option("--input-shape", help="Window TxF, e.g. 105x4.")] = "105x4",
    n_samples: Annotated[
        int | None, typer.Option("--n-samples", help="Training samples, for the ratio.")
    ] = None,
) -> None:
    """Presets with parameter counts and the parameter-to-sample ratio (warned above 1,000:1)."""
    from moola.models import describe_presets

    infos = describe_presets(_parse_shape(input_shape), n_samples)
    t = Table(title=f"presets at input {input_shape}", title_justify="left")
    for c in ("preset", "task", "parameters", "params/sample", "note"):
        t.add_column(c, justify="right" if c in ("parameters", "params/sample") else "left")
    for i in infos:
        ratio = "-" if i.params_per_sample is None else f"{i.params_per_sample:,.1f}"
        t.add_row(i.name, i.task, f"{i.params:,}", ratio,
                  f"[red]{i.warning}[/]" if i.warning else "")
    console.print(t)
    from moola.models import describe_ranking_presets

    r = Table(title="ranking presets (moola rank; default inputs, 4 horizons)", title_justify="left")
    for c in ("preset", "parameters", "description"):
        r.add_column(c, justify="right" if c == "parameters" else "left")
    for row in describe_ranking_presets():
        r.add_row(row.name, f"{row.params:,}", row.description)
    console.print(r)


# ---------------------------------------------------------------------- train / eval


EncoderOpt = Annotated[
    Path | None,
    typer.Option("--pretrained-encoder", help="A moola pretrain output directory, or sweep:NAME:best."),
]
TransferModeOpt = Annotated[str | None, typer.Option("--transfer-mode", help="full|forward-only")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda")]
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="auto|fp32|bf16 (auto: bf16 where the device computes it natively)")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace a run directory that already holds a run (the old run stays until "
    "the new one completes); without it such a directory is refused.")]


def _with_options(overrides: list[str] | None, **options: object) -> list[str]:
    """Turn convenience flags (``--device cuda`` ...) into ``key=value`` config overrides."""
    out = list(overrides or [])
    out += [f"{key}={value}" for key, value in options.items() if value is not None]
    return out


@app.command("train")
@_friendly_errors
def train(
    config: Annotated[Path | None, typer.Option(
        "--config", help="Run config YAML (see docs/configs.md).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. train.epochs=5")
    ] = None,
    arrays: Annotated[Path | None, typer.Option(
        "--arrays", help="A labeled-array file (.npz: X, y[, X_test, y_test]; .parquet: long "
        "format) to train a SequenceClassifier on, with no market store.")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="With --arrays: the model preset (default: the small-data default).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="With --arrays: the run directory (default runs/<file stem>).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the checkpoint; refused when config.yaml differs.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="With --resume: resume even though the stored config.yaml differs.")] = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    pretrained_encoder: EncoderOpt = None,
    transfer_mode: TransferModeOpt = None,
) -> None:
    """Train a model; writes a checkpoint directory with report.html, metrics and baselines.
    With --arrays: a classifier on labeled arrays (any series, no store), scored beside baselines."""
    if (config is None) == (arrays is None):
        raise typer.BadParameter("give exactly one of --config (a run config) or --arrays (a "
                                 "labeled-array file)")
    if resume and overwrite:
        raise typer.BadParameter("--resume continues the run directory and --overwrite replaces it: "
                                 "give one of them")
    if arrays is not None:
        _train_arrays(arrays, preset, out, overrides or [], device, overwrite=overwrite)
        return
    assert config is not None
    if preset is not None or out is not None:
        raise typer.BadParameter("--preset and --out go with --arrays; with --config set "
                                 "model.preset=... / out_dir=... as overrides")
    from moola.pipelines.train import RunConfig, run_train

    extra = _with_options(overrides, pretrained_encoder=pretrained_encoder,
                          transfer_mode=transfer_mode, **{"train.device": device,
                                                          "train.precision": precision})
    cfg = RunConfig.from_yaml(config, extra)
    res = run_train(cfg, console=console, resume=resume, force=force, overwrite=overwrite)
    from moola.evaluation.run_report import verdict_is_loud

    verdict = res.metrics.get("verdict") or {}
    for line in verdict.get("lines", []):  # the report's first words, also on the console
        console.print(line, style="bold red" if verdict_is_loud(verdict) else "bold", highlight=False,
                      markup=False)
    console.print(f"run directory: {res.run_dir}")


def _train_arrays(path: Path, preset: str | None, out: Path | None, overrides: list[str],
                  device: str | None, *, overwrite: bool) -> None:
    """``moola train --arrays``: overrides are SequenceClassifier parameters (min_steps=3000,
    n_seeds=5, val_size=0.2) or dotted model./train. config keys."""
    from moola.config import ConfigError, parse_override
    from moola.pipelines.classify import PARAMS, run_train_arrays

    params: dict[str, Any] = {"show_progress": True}
    cfg_over: dict[str, Any] = {}
    problems = []
    for item in overrides:
        parsed = parse_override(item)
        if isinstance(parsed, str):
            problems.append(parsed)
        elif parsed[0].split(".")[0] in ("model", "train"):
            cfg_over[parsed[0]] = parsed[1]
        elif parsed[0] in PARAMS:
            params[parsed[0]] = parsed[1]
        else:
            problems.append(f"{parsed[0]!r} is not a SequenceClassifier parameter ({', '.join(PARAMS)}) "
                            "nor a model./train. key")
    if problems:
        raise ConfigError(problems, "overrides")
    if preset:
        params["preset"] = preset
    if device:
        params["device"] = device
    if cfg_over:
        params["overrides"] = cfg_over
    target = out or Path("runs") / path.stem
    m = run_train_arrays(path, target, params, overwrite=overwrite)
    if "verdict" in m:
        console.print(f"[bold]{m['verdict']}[/]")
        console.print("  " + ", ".join(f"{k} {v:.3f}" for k, v in m["baselines"].items()))
    for w in m["warnings"]:
        console.print(f"[bold red]WARNING[/] {w}")
    console.print(f"{m['preset']} ({m['n_params']:,} parameters) on {m['n_train']} series, classes "
                  f"{', '.join(m['classes'])}; run directory: {target}")


@app.command("evaluate")
@_friendly_errors
def evaluate(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run directory written by moola train (or --ensemble).")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Store to evaluate on (default: the run's data).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="test|val|train|all")] = "test",
    ensemble: Annotated[Path | None, typer.Option(
        "--ensemble", help="An ensemble file (docs/registry.md) instead of a run directory.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="With --ensemble: folder for its evaluation (default runs/ensemble_STEM).")] = None,
    timeframe: Annotated[str | None, typer.Option(
        "--timeframe", help="With --data: the store's timeframe to read (1m|5m|15m|1h|4h|1d).")] = None,
    symbols: Annotated[str | None, typer.Option(
        "--symbols", help="Comma-separated subset of symbols to evaluate on.")] = None,
) -> None:
    """Re-evaluate a saved run beside the baselines on the same rows (refuses a different feature
    schema); writes evaluation_SPLIT.json, the scored rows and an HTML report per split."""
    if (run_dir is None) == (ensemble is None):
        raise typer.BadParameter("give a run directory or --ensemble FILE (exactly one)")
    if (timeframe or symbols) and (ensemble is not None or (run_dir is not None and _is_rank_run(run_dir))):
        raise typer.BadParameter("--timeframe/--symbols apply to a moola train run directory; an ensemble "
                                 "and a ranking run read what they were built on")
    if ensemble is not None:
        from moola.pipelines.predict import run_ensemble_evaluate

        where = out or Path("runs") / f"ensemble_{ensemble.stem}"
        res = run_ensemble_evaluate(ensemble, out=where, split=split, store=data)
        for part in ("train", "val", "test"):
            if part in res:
                m = res[part]["metrics"]
                console.print(f"{part}: {res[part]['n_rows']:,} rows, accuracy {m['accuracy']:.4f}, "
                              f"log loss {m['log_loss']:.4f}")
        console.print(f"ensemble evaluation -> {where}")
        return
    assert run_dir is not None
    if _is_rank_run(run_dir):  # a moola rank train directory: its own scorer (val or test)
        from moola.pipelines.rank import run_rank_evaluate

        if data is not None:
            raise typer.BadParameter("--data: a ranking run is evaluated on its own panel's dates")
        run_rank_evaluate(run_dir, split=split, console=console)
        return
    from moola.pipelines.train import run_evaluate

    run_evaluate(run_dir, store=data, split=split, console=console, timeframe=timeframe,
                 symbols=[x.strip() for x in symbols.split(",") if x.strip()] if symbols else None)


def _is_rank_run(run_dir: Path) -> bool:
    from moola._io import read_json

    man = run_dir / "manifest.json"
    return man.is_file() and read_json(man).get("kind") == "rank_run"


@app.command("predict")
@_friendly_errors
def predict(
    store: Annotated[Path, typer.Option("--store", help="Store with the bars to predict on.")],
    out: Annotated[Path, typer.Option("--out", help="Predictions Parquet file to write.")],
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run directory written by moola train (or --ensemble).")
    ] = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", help="Comma-separated (default: the run's symbols).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only windows whose last bar is at/after this ISO time.")
    ] = None,
    ensemble: Annotated[Path | None, typer.Option(
        "--ensemble", help="An ensemble file (docs/registry.md) instead of a run directory.")] = None,
) -> None:
    """Per (symbol, ts) calibrated probabilities (or scores) of a trained run on a store's bars."""
    from moola.pipelines.predict import run_ensemble_predict, run_predict

    if (run_dir is None) == (ensemble is None):
        raise typer.BadParameter("give a run directory or --ensemble FILE (exactly one)")
    syms = symbols.split(",") if symbols else None
    if ensemble is not None:
        frame = run_ensemble_predict(ensemble, store, out, symbols=syms, since=_parse_when(since))
    elif run_dir is not None and _is_rank_run(run_dir):  # per-(date, symbol) scores of a ranking run
        from moola.pipelines.rank import run_rank_predict

        if syms is not None:
            raise typer.BadParameter("--symbols: a ranking run scores its whole universe")
        path = run_rank_predict(run_dir, out, store=str(store), start=since, console=console)
        console.print(f"ranking scores -> {path}")
        return
    else:
        assert run_dir is not None
        frame = run_predict(run_dir, store, out, symbols=syms, since=_parse_when(since))
    console.print(f"{frame.height:,} predictions over {frame['symbol'].n_unique()} symbol(s) -> {out}")


def _add_label() -> None:
    """`moola label` (rule labeler) and `moola label serve` (by eye) live in moola.cli._label."""
    from moola.cli._label import label_app

    app.add_typer(label_app, name="label")


_add_label()


@app.command("pretrain")
@_friendly_errors
def pretrain(
    config: Annotated[Path, typer.Option("--config", help="Pretrain config YAML.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint.")] = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Masked-autoencoder pretraining of a BiLSTM encoder on the unlabeled pool."""
    from moola.pipelines.pretrain import PretrainConfig, run_pretrain

    if resume and overwrite:
        raise typer.BadParameter("--resume continues the encoder directory and --overwrite replaces "
                                 "it: give one of them")
    extra = _with_options(overrides, **{"train.device": device, "train.precision": precision})
    run_pretrain(PretrainConfig.from_yaml(config, extra), console=console, resume=resume,
                 overwrite=overwrite)


@app.command("oof")
@_friendly_errors
def oof(
    config: Annotated[Path, typer.Option("--config", help="OOF config YAML.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    pretrained_encoder: EncoderOpt = None,
    transfer_mode: TransferModeOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Folds x seeds comparison of scratch vs pretrained arms and baselines, with a verdict."""
    from moola.pipelines.oof import OOFConfig, run_oof

    extra = _with_options(overrides, pretrained_encoder=pretrained_encoder,
                          transfer_mode=transfer_mode)
    run_oof(OOFConfig.from_yaml(config, extra), console=console, overwrite=overwrite)
