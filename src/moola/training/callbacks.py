"""Callbacks of the training loop.

Call order, guaranteed by ``Trainer.fit``: ``on_fit_start`` once; per epoch
``on_epoch_start``, ``on_batch_end`` after every optimizer step, ``on_epoch_end`` with the
epoch's logs (train + val metrics); ``on_fit_end`` once. ``state_dict``/``load_state_dict``
carry a callback's state through a resumed run.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from moola.training.trainer import Trainer


class Callback:
    """No-op base; override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int, loss: float, batch_size: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved for ``patience`` epochs; keep the best weights.
    Epochs before ``start_epoch`` (0-based) are ignored: neither best nor counted."""

    def __init__(self, metric: str = "val_loss", mode: str = "min", patience: int = 5,
                 min_delta: float = 0.0, restore_best: bool = True, start_epoch: int = 0) -> None:
        self.metric = metric
        self.start_epoch = start_epoch
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.metric not in logs:
            raise KeyError(
                f"early stopping metric '{self.metric}' is not logged; available: {sorted(logs)}"
            )
        value = float(logs[self.metric])
        if epoch < self.start_epoch:
            return
        if math.isnan(value):
            self.bad_epochs += 1
        elif self._improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best:
                self.best_weights = {k: v.detach().clone().cpu()
                                     for k, v in trainer.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.stop_training = True
            trainer.log(f"early stopping at epoch {epoch + 1}: best {self.metric}={self.best:.5g} "
                        f"at epoch {(self.best_epoch or 0) + 1}")

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
            trainer.log(f"restored best weights from epoch {(self.best_epoch or 0) + 1}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]


class ProgressBar(Callback):
    """Epoch bar with loss, the key metrics and samples/s."""

    def __init__(self, keys: tuple[str, ...] = ("val_loss", "val_accuracy")) -> None:
        self.keys = keys
        self.progress: Progress | None = None
        self.task: Any = None
        self.samples = 0
        self.loss_sum = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[extra]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=trainer.batches_per_epoch_, epoch=0, epochs=trainer.epochs_,
            loss="-", extra="", rate="-",
        )

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        assert self.progress is not None
        self.samples, self.loss_sum = 0, 0.0
        self.progress.reset(self.task, total=trainer.batches_per_epoch_,
                            completed=trainer.resume_batch_ if epoch == trainer.start_epoch_ else 0)
        self.progress.update(self.task, epoch=epoch + 1)

    def on_batch_end(self, trainer: Trainer, step: int, loss: float, batch_size: int) -> None:
        assert self.progress is not None
        self.samples += batch_size
        self.loss_sum += loss * batch_size
        rate = self.samples / max(trainer.epoch_seconds(), 1e-9)
        self.progress.update(self.task, advance=1, loss=f"{self.loss_sum / self.samples:.4f}",
                             rate=f"{rate:,.0f}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        assert self.progress is not None
        extra = "  ".join(f"{k} {logs[k]:.4f}" for k in self.keys if k in logs)
        self.progress.update(self.task, extra=extra)
        self.progress.console.print(
            f"epoch {epoch + 1}: " + "  ".join(
                f"{k}={v:.4f}" for k, v in logs.items()
                if k.startswith(("train_loss", "val_loss", "train_acc", "val_acc", "val_bal"))
                or k in ("lr", "samples_per_s")
            ), highlight=False,
        )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.stop()


class FreezeSchedule(Callback):
    """Keep some parameters frozen for ``epochs`` epochs, then let them train.

    ``params`` is a name prefix (e.g. ``"encoder."``) or an explicit collection of parameter
    names (e.g. exactly the tensors a transfer loaded).
    """

    def __init__(self, params: str | Collection[str], epochs: int) -> None:
        self.params = params
        self.epochs = epochs

    def _selected(self, name: str) -> bool:
        if isinstance(self.params, str):
            return name.startswith(self.params)
        return name in self.params

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        frozen = epoch < self.epochs
        n = 0
        for name, p in trainer.model.named_parameters():
            if self._selected(name):
                p.requires_grad_(not frozen)
                n += 1
        if n == 0:
            raise ValueError(f"freeze selection {self.params!r} matches no parameter")
        if epoch == self.epochs and epoch > 0:
            trainer.log(f"epoch {epoch + 1}: unfroze {n} tensors")
