"""The ``moola tune`` driver: an Optuna study over ``run_train``, shared by any number of workers.

Every trial is one ordinary ``run_train`` call (same code path as ``moola train``) on the base
config plus the trial's draws; its value is the best validation metric over epochs, reported
each epoch to the pruner. ``trials`` is the study's total: a worker claims a trial under a
storage-wide lock (``fcntl.flock`` on ``DB.lock`` for SQLite, ``pg_advisory_lock`` for
PostgreSQL) only while fewer than ``trials`` are finished, running or waiting, so reruns
continue a study and several processes together make exactly ``trials``. Running trials
heartbeat; a worker that died (``kill -9``) leaves a trial that goes stale, is marked FAIL by
the next worker and is replaced.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moola._io import atomic_write, atomic_write_text, redact_urls
from moola._storage import resolve_storage_url
from moola._storage import storage_lock as study_lock  # the claim lock: claims and study creation
from moola.config import MAX_RUNS, MAX_WORKERS, ConfigError, config_hash
from moola.sweeps._space import SearchSpace, apply_values, check_space, trial_config
from moola.training.callbacks import Callback

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

    from moola.pipelines.rank import RankConfig
    from moola.pipelines.train import RunConfig
    from moola.training.trainer import Trainer

__all__ = [
    "MetricError",
    "PruningCallback",
    "TuneError",
    "TuneOptions",
    "TuneResult",
    "default_storage",
    "logged_metrics",
    "parse_metric",
    "resolve_storage_url",
    "run_tune",
    "study_lock",
    "summarize",
]

Mode = Literal["min", "max"]
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")


class TuneError(ValueError):
    """Tuning cannot go on (bad option, mismatched study, failed workers); the text says why."""


class MetricError(TuneError):
    """The tuning metric is not among the validation metrics a trial logs."""


def parse_metric(text: str) -> tuple[str, Mode]:
    """``val_loss:min`` -> ("val_loss", "min"); without a suffix, *loss* minimises, else maximises.

    Only validation metrics are accepted: tuning on test numbers would leak the test split.
    """
    name, _, mode = text.partition(":")
    name = name.strip()
    if not name.startswith("val_"):
        raise TuneError(f"--metric {text!r}: tune on a validation metric (val_*), never on train or test")
    if not mode:
        mode = "min" if "loss" in name else "max"
    if mode not in ("min", "max"):
        raise TuneError(f"--metric {text!r}: direction must be min or max")
    return name, mode  # type: ignore[return-value]


def default_storage(out: str | Path) -> str:
    """SQLite beside the runs: ``sqlite:///OUT/optuna.db``."""
    return f"sqlite:///{Path(out)}/optuna.db"


@dataclass(frozen=True)
class TuneOptions:
    """How a study is run; ``trials`` is the study's total, not this call's share."""

    trials: int
    out: Path = Path("runs/tune")
    storage: str | None = None  # None -> default_storage(out)
    study: str | None = None  # None -> the base config's name + "-tune"
    jobs: int = 1
    pruner: str = "median"
    sampler: str = "tpe"
    metric: str = "val_loss:min"
    seed: int = 0
    command: Literal["train", "rank"] = "train"  # the pipeline every trial runs
    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial
    grace_period: int = 30  # seconds without a heartbeat before a running trial counts as dead
    max_failures: int = 3  # failed trials in a row before a worker gives up

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.trials <= MAX_RUNS:
            problems.append(f"--trials must be between 1 and {MAX_RUNS:,} (got {self.trials})")
        if not 1 <= self.jobs <= MAX_WORKERS:
            problems.append(f"--jobs must be between 1 and {MAX_WORKERS:,} (got {self.jobs})")
        if self.pruner not in PRUNERS:
            problems.append(f"--pruner {self.pruner!r}: choose one of {', '.join(PRUNERS)}")
        if self.sampler not in SAMPLERS:
            problems.append(f"--sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.command not in ("train", "rank"):
            problems.append(f"--command {self.command!r}: choose train or rank")
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            problems.append(f"heartbeat {self.heartbeat_interval}s / grace {self.grace_period}s: need "
                            "heartbeat >= 1 and grace above the heartbeat")
        if problems:
            raise TuneError("; ".join(problems))
        parse_metric(self.metric)

    @property
    def storage_url(self) -> str:
        return resolve_storage_url(self.storage) if self.storage else default_storage(self.out)

    def study_name(self, base: RunConfig | RankConfig) -> str:
        return self.study or f"{base.name}-tune"


@dataclass
class TuneResult:
    """What a finished ``run_tune`` leaves: the study's counts and the files written."""

    study: str
    storage: str
    study_dir: Path
    counts: dict[str, int]
    best_number: int | None = None
    best_value: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    best_yaml: Path | None = None
    trials_csv: Path | None = None
    plot: Path | None = None
    report: Path | None = None


# --- Optuna pieces --------------------------------------------------------------------------------


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with heartbeats is what we do on purpose (study.optimize cannot hit an exact total)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def _make_storage(url: str, opts: TuneOptions) -> RDBStorage:
    import sqlalchemy
    from optuna.storages import RDBStorage

    kwargs: dict[str, Any] = {}
    if sqlalchemy.engine.make_url(url).get_backend_name() == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # wait out a peer's write
    return RDBStorage(url, heartbeat_interval=opts.heartbeat_interval, grace_period=opts.grace_period,
                      **kwargs)


def _make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _make_pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


class PruningCallback(Callback):
    """Reports the validation metric each epoch, prunes when the pruner says so, keeps the best."""

    def __init__(self, trial: optuna.Trial, metric: str, mode: Mode) -> None:
        self.trial = trial
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        import optuna

        if self.metric not in logs:
            available = sorted(k for k in logs if k.startswith("val_")) or sorted(logs)
            raise MetricError(f"tuning metric '{self.metric}' is not logged by this run; "
                              f"available: {', '.join(available)}")
        value = float(logs[self.metric])
        if math.isfinite(value):
            self.trial.report(value, epoch)
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best, self.best_epoch = value, epoch
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}: {self.metric}={value:.5g}")


class _Heartbeat:
    """Records a running trial's heartbeat every ``interval`` s until the trial is told."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a busy database: the next beat tries again
                self.storage.record_heartbeat(self.trial_id)
            self._stop.wait(self.interval)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- one worker -----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _values_text(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


@dataclass
class _Worker:
    """One claim loop on the study: claim under the lock, train, tell; until the total is reached."""

    base: dict[str, Any]
    space: SearchSpace
    opts: TuneOptions
    study_name: str
    console: Console
    label: str = ""

    def __post_init__(self) -> None:
        import optuna

        _quiet_optuna()
        self.url = self.opts.storage_url
        self.metric, self.mode = parse_metric(self.opts.metric)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.study_dir = Path(self.opts.out) / self.study_name
        with study_lock(self.url):
            self.storage = _make_storage(self.url, self.opts)
            self.study = optuna.load_study(
                study_name=self.study_name, storage=self.storage,
                sampler=_make_sampler(self.opts.sampler, self.opts.seed),
                pruner=_make_pruner(self.opts.pruner, int(self.base["train"]["epochs"])))

    def _claim(self) -> tuple[optuna.Trial | None, int]:
        """Inside the lock: ask for a trial while the study is short of its total."""
        from optuna.trial import TrialState

        with study_lock(self.url):
            counts = Counter(t.state for t in self.study.get_trials(deepcopy=False))
            waiting = counts[TrialState.WAITING]
            taken = waiting + sum(counts[s] for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                      TrialState.RUNNING))
            if not waiting and taken >= self.opts.trials:
                return None, counts[TrialState.RUNNING]
            trial = self.study.ask()  # pops an enqueued (WAITING) trial first
            self.storage.record_heartbeat(trial._trial_id)
            return trial, counts[TrialState.RUNNING] + 1

    def run(self) -> int:
        """Run trials until the study has its total and no peer is still running one."""
        import optuna

        ran = failures = 0
        waiting_said = False
        while True:
            optuna.storages.fail_stale_trials(self.study)
            trial, running = self._claim()
            if trial is None:
                if running == 0:
                    return ran
                if not waiting_said:
                    self.console.print(f"{self.label}study {self.study_name} has its {self.opts.trials} "
                                       f"trials; waiting for {running} running on other workers")
                    waiting_said = True
                time.sleep(min(self.opts.heartbeat_interval, 2))
                continue
            waiting_said = False
            ran += 1
            ok = self._run_trial(trial)
            failures = 0 if ok else failures + 1
            if failures >= self.opts.max_failures:
                raise TuneError(f"{failures} trials in a row failed on worker {self.worker_id}; "
                                f"see the 'moola.error' of the last trials in {redact_urls(self.url)}")

    def _run_trial(self, trial: optuna.Trial) -> bool:
        """Sample, train through the command's pipeline (run_train or run_rank_train), tell;
        False when the trial failed."""
        import optuna
        from optuna.trial import TrialState

        from moola.sweeps._matrix import command_entry
        from moola.tracking import TrackingOptions

        cls, run = command_entry(self.opts.command)

        n = trial.number
        # a per-trial seed: workers in other processes draw different values, reproducibly
        self.study.sampler = _make_sampler(self.opts.sampler, self.opts.seed + n)
        t0 = time.perf_counter()
        values: dict[str, Any] = {}
        state, value, note = TrialState.FAIL, None, ""
        with _Heartbeat(self.storage, trial._trial_id, self.opts.heartbeat_interval):
            try:
                trial.set_user_attr("moola.worker", self.worker_id)
                values = self.space.sample(trial, self.base)
                trial.set_user_attr("moola.values", values)
                cfg = trial_config(self.base, values, cls=cls, name=f"trial-{n:04d}",
                                   out_dir=str(self.study_dir))
                trial.set_user_attr("moola.run_dir", str(cfg.run_dir))
                cb = PruningCallback(trial, self.metric, self.mode)
                tracking = TrackingOptions(experiment=f"tune/{self.study_name}",
                                           run_name=f"{self.study_name}/trial-{n:04d}",
                                           tags={"moola.study": self.study_name, "moola.trial": str(n)})
                # the study owns its trial directories: a trial number is never reused within it
                run(cfg, console=Console(quiet=True), show_progress=False, callbacks=[cb], tracking=tracking,
                    overwrite=True)
                if cb.best is None:
                    note = f"no finite {self.metric} in any epoch"
                    trial.set_user_attr("moola.error", note)
                else:
                    state, value = TrialState.COMPLETE, cb.best
                    trial.set_user_attr("moola.best_epoch", (cb.best_epoch or 0) + 1)
            except optuna.TrialPruned as e:
                state, note = TrialState.PRUNED, str(e)
            except (MetricError, ConfigError, KeyboardInterrupt):  # not the trial's fault: stop
                self._tell(trial, TrialState.FAIL, None)
                raise
            except Exception as e:
                note = f"{type(e).__name__}: {e}"
                with contextlib.suppress(Exception):
                    trial.set_user_attr("moola.error", note[:2000])
            told = self._tell(trial, state, value)
        seconds = time.perf_counter() - t0
        if told is None:
            note = "marked FAIL by another worker (missed heartbeats); result dropped"
            state = TrialState.FAIL
        elif told.value is not None:
            value = told.value  # a pruned trial's last reported value
        shown = "-" if value is None else f"{value:.5g}"
        colour = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow"}.get(state, "red")
        self.console.print(
            f"{self.label}trial {n:4d} [{colour}]{state.name:<8}[/] {self.metric}={shown}  "
            f"{escape(_values_text(values))}  ({seconds:.1f}s)"
            + (f"  [dim]{escape(note)}[/]" if note and state != TrialState.COMPLETE else ""),
            highlight=False, soft_wrap=True)
        return state != TrialState.FAIL

    def _tell(self, trial: optuna.Trial, state: Any, value: float | None) -> optuna.trial.FrozenTrial | None:
        """Finish the trial; None when a peer already failed it as stale."""
        from optuna.trial import TrialState

        values = value if state == TrialState.COMPLETE else None
        frozen = self.study.tell(trial, values, state=state, skip_if_finished=True)
        return frozen if frozen.state == state else None


def _worker_main(payload: dict[str, Any]) -> None:
    """Entry point of a ``--jobs`` worker process (spawned): pin threads, run the claim loop."""
    import sys

    import torch

    from moola._warnings import GuardWarning

    warnings.simplefilter("ignore", GuardWarning)
    torch.set_num_threads(payload["threads"])
    console = Console()
    try:
        worker = _Worker(payload["base"], payload["space"], payload["opts"], payload["study"], console,
                         label=f"[dim]w{payload['index']}[/] ")
        worker.run()
    except (TuneError, ConfigError) as e:
        console.print(f"[bold red]error:[/] worker {payload['index']}: {escape(str(e))}", highlight=False)
        sys.exit(2)


# --- the driver -----------------------------------------------------------------------------------


def _open_study(url: str, name: str, opts: TuneOptions, base: RunConfig | RankConfig, space: SearchSpace,
                console: Console) -> None:
    """Create the study (or check that an existing one optimises the same metric)."""
    import optuna

    metric, mode = parse_metric(opts.metric)
    direction: Literal["minimize", "maximize"] = "minimize" if mode == "min" else "maximize"
    with study_lock(url):
        storage = _make_storage(url, opts)
        study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                    load_if_exists=True)
        attrs = study.user_attrs
        if study.direction.name.lower() != direction or attrs.get("moola.metric", metric) != metric:
            raise TuneError(f"study {name} in {redact_urls(url)} optimises "
                            f"{attrs.get('moola.metric', '?')} ({study.direction.name.lower()}), not "
                            f"{metric} ({direction}); pick another --study")
        checks = {"moola.base_hash": config_hash(base), "moola.space_hash": space.digest()}
        for key, now in checks.items():
            if key in attrs and attrs[key] != now:
                what = "base config" if key == "moola.base_hash" else "search space"
                console.print(f"[yellow]note:[/] the {what} differs from the one study {name} "
                              "started with; trials of both are compared as one study")
        for key, value in {"moola.metric": metric, **checks}.items():
            if key not in attrs:
                study.set_user_attr(key, value)


def logged_metrics(base: RunConfig | RankConfig, command: str) -> tuple[str, ...]:
    """The ``val_*`` keys a trial's epochs log, from the names its objective declares (``{i}``:
    a number the data decides)."""
    from moola.pipelines.rank import RankConfig
    from moola.pipelines.train import RunConfig, val_metric_names
    from moola.training.objectives import expand_metric_names
    from moola.training.ranking import RankingObjective

    if command == "rank" and isinstance(base, RankConfig):
        names = expand_metric_names(RankingObjective.metric_names, base.data.horizons)
    elif isinstance(base, RunConfig):
        names = val_metric_names(base)
    else:
        raise TuneError(f"--command {command}: the base config is a {type(base).__name__}")
    return ("val_loss", *(f"val_{n}" for n in names))


def _check_metric(base: RunConfig | RankConfig, options: TuneOptions) -> None:
    """Refuse a metric no trial would log before the study exists, not after the first trial."""
    from moola.training.objectives import metric_name_matches

    metric, _ = parse_metric(options.metric)
    names = logged_metrics(base, options.command)
    if not metric_name_matches(metric, names):
        shown = ", ".join(sorted(n.replace("{i}", "<i>") for n in names))
        raise MetricError(f"--metric: tuning metric '{metric}' is not logged by a {options.command} run "
                          f"of this config; available: {shown}")


def _prepare_tracking(study: str) -> None:
    """The MLflow store's schema and the study's experiment, made once before any worker starts."""
    from moola.tracking import open_experiment, tracking_enabled

    if tracking_enabled():
        open_experiment(f"tune/{study}")


def run_tune(base: RunConfig | RankConfig, space: SearchSpace, options: TuneOptions, *,
             console: Console | None = None) -> TuneResult:
    """Run (or continue) the study to ``options.trials`` trials and write its summary files."""
    import multiprocessing

    _quiet_optuna()
    console = console or Console()
    name = options.study_name(base)
    url = options.storage_url
    check_space(space, base, seed=options.seed)
    _check_metric(base, options)
    base_data = base.to_dict()
    Path(options.out).mkdir(parents=True, exist_ok=True)
    _open_study(url, name, options, base, space, console)
    _prepare_tracking(name)
    console.print(f"study [bold]{name}[/] in {escape(redact_urls(url))}: {options.trials} trials in total, "
                  f"{options.sampler} sampler, {options.pruner} pruner, {options.metric}, "
                  f"{options.jobs} worker(s)", highlight=False)
    if options.jobs == 1:
        _Worker(base_data, space, options, name, console).run()
    else:
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // options.jobs)
        procs = [ctx.Process(target=_worker_main, name=f"moola-tune-w{i}", args=(
            {"base": base_data, "space": space, "opts": options, "study": name, "index": i,
             "threads": threads},)) for i in range(options.jobs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [f"w{i} exited {p.exitcode}" for i, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise TuneError(f"tuning workers failed ({', '.join(bad)}); see their messages above")
    return summarize(name, url, base, space, options, console=console)


# --- the summary ----------------------------------------------------------------------------------


def _sorted_trials(trials: list[Any], mode: Mode) -> list[Any]:
    from optuna.trial import TrialState

    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3}

    def key(t: Any) -> tuple:
        v = t.value if t.value is not None else math.inf * (1 if mode == "min" else -1)
        return order.get(t.state, 4), v if mode == "min" else -v, t.number

    return sorted(trials, key=key)


def summarize(name: str, url: str, base: RunConfig | RankConfig, space: SearchSpace, options: TuneOptions, *,
              console: Console | None = None) -> TuneResult:
    """The trials table, ``best.yaml``, ``trials.csv`` and ``tuning.png`` of a study."""
    import optuna
    from optuna.trial import TrialState

    console = console or Console()
    metric, mode = parse_metric(options.metric)
    command = _COMMANDS[options.command]
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    study_dir = Path(options.out) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    counts = dict(Counter(t.state.name for t in trials))
    result = TuneResult(study=name, storage=url, study_dir=study_dir, counts=counts)

    table = Table(title=f"study {name}: {len(trials)} trials by {metric} ({mode})", title_justify="left")
    for col in ("trial", "state", metric, "seconds", "values"):
        table.add_column(col, justify="right" if col in ("trial", metric, "seconds") else "left")
    for t in _sorted_trials(trials, mode):
        secs = "-" if t.duration is None else f"{t.duration.total_seconds():.1f}"
        vals = t.user_attrs.get("moola.values") or space.decode(t.params)
        table.add_row(str(t.number), t.state.name, "-" if t.value is None else f"{t.value:.5g}", secs,
                      escape(_values_text(vals)))
    console.print(table)

    csv = study_dir / "trials.csv"
    frame = study.trials_dataframe()
    atomic_write(csv, lambda p: frame.to_csv(p, index=False))
    result.trials_csv = csv
    plot = study_dir / "tuning.png"
    atomic_write(plot, lambda p: _plot_history(trials, metric, mode, name, p))
    result.plot = plot

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        values = best.user_attrs.get("moola.values") or space.decode(best.params)
        data = apply_values(base.to_dict(), values)
        data.update(name=f"{name}-best", out_dir=base.out_dir)
        cfg = type(base).from_dict(data, source=f"best trial {best.number}")
        best_yaml = study_dir / "best.yaml"
        head = (f"# moola tune: best of study {name} ({redact_urls(url)}): trial {best.number}, "
                f"{metric}={best.value:.6g}\n# {command} --config {best_yaml}\n")
        atomic_write_text(best_yaml, head + cfg.to_yaml())
        result.best_number, result.best_value, result.best_values = best.number, best.value, values
        result.best_yaml = best_yaml
        console.print(f"best: trial {best.number} {metric}={best.value:.5g}  {escape(_values_text(values))}",
                      highlight=False)
        console.print(f"best config: {best_yaml}  ({command} --config {best_yaml})", highlight=False)
    else:
        console.print(f"[yellow]no complete trial in study {name}: no best.yaml[/]")
    result.report = _write_report(study_dir, name, metric, mode, trials, space, options.command)
    console.print(f"trials: {csv}   history plot: {plot}   report: {result.report}", highlight=False)
    console.print(f"dashboard: optuna-dashboard {escape(redact_urls(url))}", highlight=False)
    return result


_COMMANDS = {"rank": "moola rank train", "train": "moola train"}


def tuning_verdict(trials: list[Any], metric: str, mode: Mode) -> tuple[list[str], bool]:
    """The tuning report's first lines and whether they are bad news: the best trial against the
    first and the median complete trial (what tuning bought on validation), and the best trial's
    own test verdict, which is one draw of many and favoured by the choice."""
    import statistics

    from optuna.trial import TrialState

    from moola._io import read_json

    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: t.number)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(Counter(t.state.name for t in trials).items()))
    if not done:
        return [f"NOTHING TUNED: no trial completed ({counts}); no best configuration."], True
    best = (min if mode == "min" else max)(done, key=lambda t: t.value)
    med = statistics.median(t.value for t in done)
    first = done[0]
    lines = [f"Best of {len(done)} complete trial(s) ({counts}) by validation {metric} ({mode}): trial "
             f"{best.number} with {best.value:.5g}, against {first.value:.5g} for the first complete "
             f"trial ({best.value - first.value:+.5g}) and {med:.5g} for the median one "
             f"({best.value - med:+.5g})."]
    loud = len(done) < 2
    if loud:
        lines.append("ONE COMPLETE TRIAL: nothing was compared, so nothing was tuned.")
    elif best.value == first.value:  # the first trial itself, or a tie with it
        loud = True
        lines.append(f"NOTHING GAINED: no later trial beat the first complete one on validation {metric}; "
                     "the search space or the trial count bought nothing.")
    run_dir = best.user_attrs.get("moola.run_dir")
    metrics = Path(run_dir) / "metrics.json" if run_dir else None
    if metrics is not None and metrics.is_file():
        verdict = read_json(metrics).get("verdict") or {}
        if verdict.get("lines"):
            from moola.evaluation.run_report import verdict_is_loud

            lines.append(f"The best trial's test verdict: {verdict['lines'][0]}")
            loud = loud or verdict_is_loud(verdict)
        lines.append(f"It was chosen as the best of {len(done)} on validation: its test score is one "
                     "draw, favoured by the choice (moola promote deflates the economic check for "
                     "the number of configurations that saw the test segment).")
    return lines, loud


def _write_report(study_dir: Path, name: str, metric: str, mode: Mode, trials: list[Any],
                  space: SearchSpace, command: str) -> Path:
    """``STUDY_DIR/report.html``: the verdict first, then the history plot and every trial."""
    import polars as pl

    from moola.evaluation.data_report import DataReport

    lines, loud = tuning_verdict(trials, metric, mode)
    rep = DataReport(study_dir, title=f"moola tune: {name}")
    rep.verdict_box(lines, loud=loud)
    rep.figure(_history_figure(trials, metric, mode, name), "tuning_history",
               f"{metric} per trial (pruned: the last value reported before pruning) and the best so "
               "far, held through the last trial")
    rows = [{"trial": t.number, "state": t.state.name, metric: t.value,
             "seconds": None if t.duration is None else t.duration.total_seconds(),
             "values": _values_text(t.user_attrs.get("moola.values") or space.decode(t.params)),
             "run": t.user_attrs.get("moola.run_dir") or ""} for t in _sorted_trials(trials, mode)]
    rep.table(pl.DataFrame(rows, schema={"trial": pl.Int64, "state": pl.String, metric: pl.Float64,
                                         "seconds": pl.Float64, "values": pl.String, "run": pl.String}),
              caption=f"every trial, best first ({_COMMANDS[command]} runs; the values each sampled)",
              max_rows=500)
    return rep.write("report.html")


def _plot_history(trials: list[Any], metric: str, mode: Mode, name: str, path: Path) -> None:
    """Write the history figure as a PNG (see :func:`_history_figure`)."""
    import matplotlib.pyplot as plt

    fig = _history_figure(trials, metric, mode, name)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _best_so_far(trials: list[Any], mode: Mode) -> tuple[list[int], list[float]]:
    """Step points of the best complete value, held to the last trial of any state, so pruned or
    failed trials after the last complete one still show the best standing through them."""
    from optuna.trial import TrialState

    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: t.number)
    best: float | None = None
    xs: list[int] = []
    ys: list[float] = []
    for t in done:
        if best is None or (t.value < best if mode == "min" else t.value > best):
            best = t.value
        xs.append(t.number)
        ys.append(best)
    last = max(t.number for t in trials) if trials else None
    if best is not None and last is not None and last > xs[-1]:
        xs.append(last)
        ys.append(best)
    return xs, ys


def _history_figure(trials: list[Any], metric: str, mode: Mode, name: str) -> Any:
    """Value per trial (pruned: last reported value, failed: marked on the axis) + best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(8, 4.5))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], color="C0", label="complete", zorder=3)
        xs, ys = _best_so_far(trials, mode)
        ax.step(xs, ys, where="post", color="C2", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], color="C1", marker="x",
                   label="pruned (last value)", zorder=3)
    if failed:
        lo = ax.get_ylim()[0] if (done or pruned) else 0.0
        ax.scatter([t.number for t in failed], [lo] * len(failed), color="red", marker="v",
                   label="failed", zorder=3, clip_on=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} ({mode})")
    ax.set_title(f"{name}: optimization history")
    ax.grid(alpha=0.3)
    if done or pruned or failed:
        ax.legend(loc="best")
    fig.tight_layout()
    return fig
