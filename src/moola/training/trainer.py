"""The one training loop, for every objective (classification, direction, regression,
reconstruction). Setup -> epochs of (shuffled batches -> step) -> evaluate -> callbacks -> save.

Resumable: with a ``run_dir`` the loop writes complete, atomic checkpoints (every
``checkpoint_every`` steps and at each epoch end) holding weights, optimizer, scheduler, RNG
and loop state; ``fit(resume=True)`` continues from the latest one and, on CPU, ends with
bitwise the same weights as an uninterrupted run.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from torch import nn

from moola._io import dumps_json
from moola.training.callbacks import Callback, EarlyStopping, ProgressBar
from moola.training.checkpoint import (
    WEIGHTS,
    load_state,
    load_tensors,
    load_weights,
    save_state,
    save_weights,
)
from moola.training.config import OptimizerConfig, SchedulerConfig, TrainConfig
from moola.training.data import BatchSource, epoch_order, num_batches
from moola.training.guards import HealthGuard
from moola.training.objectives import Objective


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo, read once a process (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "flags:")
    except OSError:  # not Linux: no flags to read, no claim
        return frozenset()
    return frozenset(line.split(":", 1)[1].split())


def native_bf16(device: torch.device) -> bool:
    """The device computes bf16 in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX
    (elsewhere bf16 autocast is emulated and slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(name: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` is bf16 where :func:`native_bf16`, else fp32; fp32 and bf16 are taken as given."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {name!r}; valid: auto, fp32, bf16")
    return "bf16" if name == "bf16" else "fp32"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def build_optimizer(cfg: OptimizerConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """Explicit dispatch; param groups may carry their own ``lr`` (e.g. a pretrained encoder)."""
    match cfg.name:
        case "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        case "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        case "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)
        case "adabelief":
            from pytorch_optimizer import AdaBelief

            return AdaBelief(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    raise ValueError(f"unknown optimizer {cfg.name}")


def build_scheduler(cfg: SchedulerConfig, opt: torch.optim.Optimizer, *, steps_per_epoch: int,
                    epochs: int) -> Any:
    match cfg.name:
        case "none":
            return None
        case "cosine_warm_restarts":
            # eta_min is a floor under a positive lr: a learning rate of 0 (a run meant to train
            # nothing) stays 0 instead of rising to eta_min
            untrainable = all(g["lr"] == 0 for g in opt.param_groups)
            return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                opt, T_0=cfg.T_0, T_mult=cfg.T_mult, eta_min=0.0 if untrainable else cfg.eta_min)
        case "one_cycle":
            max_lr = cfg.max_lr or [g["lr"] for g in opt.param_groups]
            return torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=max_lr, total_steps=max(1, steps_per_epoch * epochs),
                pct_start=cfg.pct_start)
        case "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max" if "acc" in cfg.monitor else "min", factor=cfg.factor,
                patience=cfg.patience)
    raise ValueError(f"unknown scheduler {cfg.name}")


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int | None
    stopped_early: bool
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Construct with model, objective and config; ``fit`` runs; ``evaluate`` measures.

    The constructor only stores what it is given (scikit-learn style). ``fit`` resolves the
    device, assembles the callbacks (health guard, early stopping, the given ones, progress bar)
    and leaves its learned state in attributes ending in ``_``: ``device_``, ``precision_`` (fp32
    or bf16, ``auto`` resolved), ``callbacks_``,
    ``early_stopping_``, ``history_``, ``warnings_``, ``messages_``, ``global_step_``,
    ``steps_in_epoch_``, ``start_epoch_``, ``resume_batch_``, ``n_train_``,
    ``batches_per_epoch_``, ``epochs_`` (``epochs`` raised to reach ``min_steps``), ``n_val_``
    (the samples behind the val_ metrics) and ``n_train_eval_`` (the fixed training subset behind
    ``train_eval_metrics``, the eval-mode numbers the guards confirm with; the per-epoch train_
    metrics come from the training pass itself, at no extra forward pass),
    ``train_label_counts_`` / ``val_label_counts_`` (labels per class of the training /
    validation set, None without integer ``y``).
    Callbacks may set ``stop_training`` to end the run after an epoch.
    Data is any ``BatchSource`` (``moola.training.data``).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: TrainConfig,
        *,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        param_groups: list[dict[str, Any]] | None = None,
        show_progress: bool = True,
        console: Console | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.config = config
        self.run_dir = run_dir
        self.callbacks = callbacks
        self.param_groups = param_groups
        self.show_progress = show_progress
        self.console = console

    # -------------------------------------------------------------------- helpers
    def log(self, message: str) -> None:
        if not hasattr(self, "messages_"):
            self.messages_: list[str] = []
        self.messages_.append(message)
        (self.console or Console(stderr=True)).print(message, highlight=False)

    def epoch_seconds(self) -> float:
        return time.perf_counter() - self._epoch_t0

    @property
    def run_path(self) -> Path | None:
        return Path(self.run_dir) if self.run_dir is not None else None

    def _device(self) -> torch.device:
        if not hasattr(self, "device_"):
            self.device_ = resolve_device(self.config.device)
        return self.device_

    def _setup(self) -> None:
        """Device, callbacks and fresh loop state, once per ``fit``."""
        cfg = self.config
        self.device_ = resolve_device(cfg.device)
        self.precision_ = resolve_precision(cfg.precision, self.device_)
        self.callbacks_: list[Callback] = [HealthGuard(cfg.guards)]
        self.early_stopping_: EarlyStopping | None = None
        if cfg.early_stopping is not None:
            es = cfg.early_stopping
            self.early_stopping_ = EarlyStopping(es.metric, es.mode, es.patience, es.min_delta,
                                                 es.restore_best, es.start_epoch)
            self.callbacks_.append(self.early_stopping_)
        self.callbacks_.extend(self.callbacks)
        if self.show_progress:
            self.callbacks_.append(ProgressBar())
        self.stop_training = False
        self.messages_ = []
        self.history_: list[dict[str, float]] = []
        self.warnings_: list[str] = []
        self.global_step_ = 0
        self.steps_in_epoch_ = 0
        self.start_epoch_ = 0
        self.resume_batch_ = 0
        self.n_train_ = 0
        self.n_val_ = 0
        self.n_train_eval_ = 0
        self._train_eval_perm = torch.zeros(0, dtype=torch.long)  # random order: any prefix is a sample
        self._train_eval_cache: tuple[tuple[int, int], dict[str, float]] | None = None
        self._train_d: BatchSource | None = None
        self._pass: dict[str, list[np.ndarray]] = {}  # what the training pass collected this epoch
        self.train_label_counts_: np.ndarray | None = None
        self.val_label_counts_: np.ndarray | None = None
        self.batches_per_epoch_ = 0
        self.epochs_ = cfg.epochs
        self._epoch_t0 = time.perf_counter()

    def _autocast(self, precision: Literal["fp32", "bf16"] | None = None) -> Any:
        if not hasattr(self, "precision_"):
            self.precision_ = resolve_precision(self.config.precision, self._device())
        if (precision or self.precision_) == "bf16":
            return torch.autocast(self._device().type, dtype=torch.bfloat16)
        return nullcontext()

    def _warmup(self, opt: torch.optim.Optimizer) -> None:
        w = self.config.scheduler.warmup_steps
        if w and self.global_step_ < w:
            f = (self.global_step_ + 1) / w
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f if self.config.scheduler.name in ("none", "plateau") \
                    else g["lr"] * f
        elif w and self.global_step_ == w and self.config.scheduler.name in ("none", "plateau"):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"]

    # ------------------------------------------------------------------------ fit
    def fit(self, train: BatchSource, val: BatchSource | None = None, *, resume: bool = False) -> FitResult:
        cfg = self.config
        t_start = time.perf_counter()
        self._setup()
        run_dir = self.run_path
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.model.to(self.device_)
        train_d = train.to(self.device_)
        val_d = val.to(self.device_) if val is not None else None
        self.n_train_ = len(train_d)
        self.batches_per_epoch_ = num_batches(self.n_train_, cfg.batch_size)
        min_epochs = math.ceil(cfg.min_steps / max(self.batches_per_epoch_, 1))
        self.epochs_ = max(cfg.epochs, min_epochs)
        if self.early_stopping_ is not None and min_epochs:  # no stop before min_steps are taken
            self.early_stopping_.start_epoch = max(self.early_stopping_.start_epoch, min_epochs - 1)
        params = self.param_groups if self.param_groups is not None else self.model.parameters()
        opt = build_optimizer(cfg.optimizer, params)
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        sched = build_scheduler(cfg.scheduler, opt, steps_per_epoch=self.batches_per_epoch_,
                                epochs=self.epochs_)
        run_sum, run_n = 0.0, 0
        loaded = None
        if resume:
            if run_dir is None:
                raise ValueError("resume=True needs a run_dir")
            loaded = load_state(run_dir)
            if loaded is None:
                self.log(f"no checkpoint in {run_dir}: starting from scratch")
        if run_dir is not None and loaded is None:  # a fresh start, resumed or not
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "history.jsonl").write_text("")
        if loaded is not None:
            run_sum, run_n = self._restore(loaded, opt, sched)
        # eval-mode train metrics use a fixed subset so they are comparable across epochs
        gen = torch.Generator().manual_seed(cfg.seed + 7)
        k = min(self.n_train_, cfg.guards.train_eval_samples)
        self._train_eval_perm = torch.randperm(self.n_train_, generator=gen)[:k]
        self._train_d = train_d
        self.n_train_eval_, self.n_val_ = k, len(val_d) if val_d is not None else 0
        self.train_label_counts_ = _label_counts(train_d)
        self.val_label_counts_ = _label_counts(val_d) if val_d is not None else None

        for cb in self.callbacks_:
            cb.on_fit_start(self)
        try:
            for epoch in range(self.start_epoch_, self.epochs_):
                first = epoch == self.start_epoch_
                start_b = self.resume_batch_ if first else 0
                if not first or not start_b:  # a resumed epoch keeps what its first part collected
                    self._pass = {}
                if not first:
                    run_sum, run_n = 0.0, 0
                    self.steps_in_epoch_ = 0
                self._epoch_t0 = time.perf_counter()
                for cb in self.callbacks_:
                    cb.on_epoch_start(self, epoch)
                self.model.train()
                order = epoch_order(self.n_train_, cfg.seed, epoch)
                for b, batch in enumerate(train_d.batches(order, cfg.batch_size, start=start_b),
                                          start=start_b):
                    loss = self._step(batch, opt, sched, epoch, b)
                    bs = int(batch["x"].shape[0])
                    run_sum += loss * bs
                    run_n += bs
                    for cb in self.callbacks_:
                        cb.on_batch_end(self, self.global_step_, loss, bs)
                    if cfg.checkpoint_every and self.global_step_ % cfg.checkpoint_every == 0 \
                            and b + 1 < self.batches_per_epoch_:
                        self._checkpoint(opt, sched, epoch, b + 1, run_sum, run_n)
                logs = self._epoch_logs(epoch, run_sum, run_n, opt, val_d)
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step(self._plateau_value(logs))
                self.history_.append(logs)
                if run_dir is not None:
                    with open(run_dir / "history.jsonl", "a") as fh:
                        fh.write(dumps_json(logs, indent=None) + "\n")
                for cb in self.callbacks_:
                    cb.on_epoch_end(self, epoch, logs)
                self._checkpoint(opt, sched, epoch + 1, 0, 0.0, 0)
                if self.stop_training:
                    break
        finally:
            for cb in self.callbacks_:
                cb.on_fit_end(self)
        if run_dir is not None:
            save_weights(self.model, run_dir / WEIGHTS)
        es = self.early_stopping_
        return FitResult(
            history=self.history_,
            best_epoch=es.best_epoch if es is not None else None,
            stopped_early=self.stop_training,
            warnings=list(self.warnings_),
            seconds=time.perf_counter() - t_start,
        )

    def _plateau_value(self, logs: dict[str, float]) -> float:
        """The plateau scheduler's metric; without validation data a ``val_`` monitor falls back
        to its ``train_`` twin (same direction, so the scheduler's min/max mode still holds)."""
        mon = self.config.scheduler.monitor
        if mon in logs:
            return logs[mon]
        twin = "train_" + mon.removeprefix("val_") if mon.startswith("val_") else None
        if twin in logs:
            return logs[twin]
        raise KeyError(f"scheduler.monitor '{mon}' is not logged; available: {sorted(logs)}")

    def _step(self, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer, sched: Any,
              epoch: int, b: int) -> float:
        cfg = self.config
        batch = self.objective.prepare(batch, training=True)
        x = batch["x"]
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"batch {b} of epoch {epoch + 1} holds NaN/inf in 'x' "
                f"({int((~torch.isfinite(x)).sum())} values): check masking/augmentation"
            )
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts):
            sched.step(epoch + b / self.batches_per_epoch_)
        self._warmup(opt)
        with self._autocast():
            out = self.model(batch)
            loss = self.objective.loss(out, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at epoch {epoch + 1}, batch {b}: lower the "
                "learning rate, enable grad_clip, or check the targets"
            )
        if self.objective.has_accuracy:  # training-set metrics from this very pass: no second one
            for key, arr in self.objective.collect(out, batch).items():
                self._pass.setdefault(key, []).append(arr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.grad is not None], cfg.grad_clip)
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) \
                and sched.last_epoch + 1 < sched.total_steps:
            sched.step()
        self.global_step_ += 1
        self.steps_in_epoch_ += 1
        return float(loss.detach())

    def _epoch_logs(self, epoch: int, run_sum: float, run_n: int, opt: torch.optim.Optimizer,
                    val_d: BatchSource | None) -> dict[str, float]:
        secs = self.epoch_seconds()
        logs: dict[str, float] = {
            "epoch": epoch + 1,
            "step": self.global_step_,
            "train_loss": run_sum / run_n if run_n else math.nan,
            "lr": float(opt.param_groups[0]["lr"]),
            "epoch_seconds": secs,
            "samples_per_s": run_n / secs if secs > 0 else math.nan,
        }
        if self.objective.has_accuracy and self._pass:
            m = self.objective.metrics({k: np.concatenate(v) for k, v in self._pass.items()})
            logs.update({f"train_{k}": v for k, v in m.items()})
        if val_d is not None:  # fp32 as served: a bf16 run selects its epoch on what Predictor computes
            vloss, vm, _ = self.evaluate(val_d, precision="fp32")
            logs["val_loss"] = vloss
            logs.update({f"val_{k}": v for k, v in vm.items()})
        return logs

    def late_pass_metrics(self) -> tuple[dict[str, float], int]:
        """Metrics of this epoch's training pass over its last quarter of batches, and their
        sample count: nearer the weights validation then sees than the whole pass, which begins
        where the epoch began (after one epoch from random weights the whole pass lags far behind)."""
        chunks = next(iter(self._pass.values()), [])
        if not self.objective.has_accuracy or not chunks:
            return {}, 0
        k = len(chunks) - max(1, len(chunks) // 4)
        late = {key: np.concatenate(v[k:]) for key, v in self._pass.items()}
        return self.objective.metrics(late), len(next(iter(late.values())))

    def train_eval_metrics(self, limit: int | None = None) -> dict[str, float]:
        """Eval-mode metrics of the current weights on the fixed training subset
        (``n_train_eval_`` samples; ``limit``: its first ``limit``, a random sample of it),
        computed once per optimizer step and size at most: what the guards compare validation
        with when the training pass's numbers (dropout on, weights moving) raise a question."""
        if self._train_d is None or not self.n_train_eval_:
            return {}
        n = self.n_train_eval_ if limit is None else max(1, min(limit, self.n_train_eval_))
        if self._train_eval_cache is None or self._train_eval_cache[0] != (self.global_step_, n):
            _, m, _ = self.evaluate(self._train_d, order=self._train_eval_perm[:n].sort().values)
            self._train_eval_cache = ((self.global_step_, n), m)
        return self._train_eval_cache[1]

    # ------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self, data: BatchSource, batch_size: int | None = None, *,
                 order: torch.Tensor | None = None, precision: Literal["fp32", "bf16"] | None = None
                 ) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
        """Mean loss, metrics and the collected per-sample arrays, in eval mode, in order
        (of ``order`` when given: a subset of the samples). ``precision``: None runs the
        training precision; "fp32" what serving computes, so a model trained under bf16 is
        scored on the probabilities ``Predictor`` will serve."""
        self.model.eval()
        device = self._device()
        self.model.to(device)
        d = data.to(device)
        bs = batch_size or self.config.eval_batch_size or max(self.config.batch_size, 256)
        if order is None:
            order = torch.arange(len(d))
        tot, n = 0.0, 0
        parts: dict[str, list[np.ndarray]] = {}
        for batch in d.batches(order, bs):
            batch = self.objective.prepare(batch, training=False)
            with self._autocast(precision):
                out = self.model(batch)
                loss = self.objective.loss(out, batch)
            k = int(batch["x"].shape[0])
            tot += float(loss) * k
            n += k
            for key, arr in self.objective.collect(out, batch).items():
                parts.setdefault(key, []).append(arr)
        collected = {k: np.concatenate(v) for k, v in parts.items()}
        metrics = self.objective.metrics(collected) if n else {}
        return (tot / n if n else math.nan), metrics, collected

    # ------------------------------------------------------------------ checkpoint
    def _checkpoint(self, opt: torch.optim.Optimizer, sched: Any, epoch: int, batch: int,
                    run_sum: float, run_n: int) -> None:
        run_dir = self.run_path
        if run_dir is None:
            return
        torch_state: dict[str, Any] = {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            torch_state["rng_cuda"] = torch.cuda.get_rng_state_all()
        if batch and self._pass:  # mid-epoch: the epoch's training-pass metrics need its first part
            torch_state["train_pass"] = {k: torch.from_numpy(np.concatenate(v))
                                         for k, v in self._pass.items()}
        state = {
            "torch_state": torch_state,
            "epoch": epoch,
            "batch": batch,
            "global_step": self.global_step_,
            "steps_in_epoch": self.steps_in_epoch_ if batch else 0,
            "run_sum": run_sum,
            "run_n": run_n,
            "history": self.history_,
            "callbacks": [cb.state_dict() for cb in self.callbacks_],
            "warnings": self.warnings_,
        }
        es = self.early_stopping_
        best = es.best_weights if es is not None else None
        save_state(run_dir, self.global_step_, state,
                   self.model, best)

    def _restore(self, loaded: tuple[dict[str, Any], Path], opt: torch.optim.Optimizer,
                 sched: Any) -> tuple[float, int]:
        state, d = loaded
        load_weights(self.model, d / "model.safetensors")
        ts = state["torch_state"]
        opt.load_state_dict(ts["optimizer"])
        if sched is not None and ts["scheduler"]:
            sched.load_state_dict(ts["scheduler"])
        torch.set_rng_state(ts["rng_cpu"])
        self._pass = {k: [v.numpy()] for k, v in ts.get("train_pass", {}).items()}
        if "rng_cuda" in ts and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ts["rng_cuda"])
        self.start_epoch_ = int(state["epoch"])
        self.resume_batch_ = int(state["batch"])
        self.global_step_ = int(state["global_step"])
        self.steps_in_epoch_ = int(state["steps_in_epoch"])
        self.history_ = [_restore_nan(h) for h in state["history"]]
        run_dir = self.run_path
        if run_dir is not None:  # an epoch logged after this checkpoint will be re-run
            (run_dir / "history.jsonl").write_text(
                "".join(dumps_json(h, indent=None) + "\n" for h in self.history_))
        self.warnings_ = list(state["warnings"])
        for cb, s in zip(self.callbacks_, state["callbacks"], strict=False):
            cb.load_state_dict(s)
        if self.early_stopping_ is not None and (d / "best.safetensors").is_file():
            self.early_stopping_.best_weights = load_tensors(d / "best.safetensors")
        self.log(f"resumed from {d.name}: epoch {self.start_epoch_ + 1}, batch {self.resume_batch_}")
        return float(state["run_sum"]), int(state["run_n"])


def _label_counts(data: BatchSource) -> np.ndarray | None:
    """Training labels per class, asked of the source (each epoch visits every sample once, so
    these are the labels training sees); None when it holds no 1-D integer ``y``."""
    tensors = getattr(data, "tensors", None)
    y = tensors.get("y") if isinstance(tensors, dict) else None
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or not len(y) \
            or int(y.min()) < 0:
        return None
    return torch.bincount(y.long()).cpu().numpy()


def _restore_nan(logs: dict[str, Any]) -> dict[str, float]:
    """Epoch logs read back from strict JSON: the nulls written for NaN become NaN again."""
    return {k: math.nan if v is None else v for k, v in logs.items() if k != "_nulls"}
