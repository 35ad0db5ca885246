"""Guards for the failures users have hit: each is a loud warning (or error) with advice.

- more parameters per training sample than ``max_params_per_sample`` (memorisation risk);
- an epoch with no optimizer step, or whose loss and weights did not change ("60 epochs in
  3 seconds" that trained nothing);
- validation accuracy far above training accuracy on the same distribution (leakage or an
  evaluation bug);
- class collapse, judged on the model the run ends with (the restored best epoch under early
  stopping, else the last): it predicts a single class on validation (every other class has
  recall <= ``SINGLE_CLASS_RECALL``; balanced accuracy ~= 1 / n_classes, no better than the
  majority class), or some class has validation recall below ``min_class_recall``. A single-class
  epoch is also printed in red as it happens. ``single_predicted_class`` is the one test of
  "predicts one class", shared with the run report (which applies it to the test split).
Object-dtype / non-float inputs and NaN/inf batches are refused earlier, in
``moola.training.data`` and the loop itself.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from moola.training.callbacks import Callback
from moola.training.config import GuardConfig

if TYPE_CHECKING:
    from moola.training.trainer import Trainer


class GuardWarning(UserWarning):
    """A training run looks wrong; the message says why and what to check."""


COLLAPSE = "class collapse"  # every collapse warning starts with this (the run report finds them)
ONE_CLASS = "predicts only class"  # ... and the single-class one says this
# a class the model recalls at most this often is one it (almost) never predicts: 1 in 50
SINGLE_CLASS_RECALL = 0.02


def single_predicted_class(recalls: Sequence[float]) -> int | None:
    """The index of the one class a model predicts, judged from per-class recalls (class order):
    every other class has recall <= ``SINGLE_CLASS_RECALL``. None when two or more classes are
    predicted. Recalls rather than predicted counts, because the training logs carry recalls."""
    if len(recalls) < 2:
        return None
    alive = [k for k, r in enumerate(recalls) if r > SINGLE_CLASS_RECALL]
    return alive[0] if len(alive) == 1 else None


def _val_recalls(logs: Mapping[str, float]) -> list[float]:
    """``val_recall_0, val_recall_1, ...`` in class order (empty without validation metrics)."""
    out: list[float] = []
    while f"val_recall_{len(out)}" in logs:
        out.append(float(logs[f"val_recall_{len(out)}"]))
    return out


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class HealthGuard(Callback):
    """Emits ``GuardWarning`` s and records them in ``trainer.warnings_``."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self.prev_loss: float | None = None
        self.digest: str | None = None

    def warn(self, trainer: Trainer, message: str) -> None:
        trainer.warnings_.append(message)
        warnings.warn(message, GuardWarning, stacklevel=3)
        trainer.log(f"[bold red]WARNING[/] {message}")

    def on_fit_start(self, trainer: Trainer) -> None:
        n_params = sum(p.numel() for p in trainer.model.parameters())
        n = trainer.n_train_
        ratio = n_params / max(n, 1)
        if ratio > self.config.max_params_per_sample:
            self.warn(trainer, (
                f"{n_params:,} parameters for {n:,} training samples ({ratio:,.0f}:1, above "
                f"{self.config.max_params_per_sample:,.0f}:1): the model can memorise the set. "
                "Use a compact preset (jade_compact), fewer layers, or more data/pretraining."
            ))
        self.digest = _weights_digest(trainer.model)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        cfg = self.config
        if trainer.steps_in_epoch_ == 0:
            self.warn(trainer, (
                f"epoch {epoch + 1} made no optimizer step: the training set is empty or every "
                "batch was skipped. Nothing is being trained."
            ))
        digest = _weights_digest(trainer.model)
        loss = logs.get("train_loss")
        if self.prev_loss is not None and loss is not None and trainer.steps_in_epoch_ > 0:
            same_loss = abs(loss - self.prev_loss) <= 1e-7 * max(1.0, abs(loss))
            if digest == self.digest or same_loss:
                what = "no weight changed" if digest == self.digest else "the loss did not change"
                self.warn(trainer, (
                    f"epoch {epoch + 1}: {what} (train_loss {loss:.6g}). Check the learning rate, "
                    "frozen parameters, a detached graph, or a constant target."
                ))
        self.prev_loss, self.digest = loss, digest
        tr, va = logs.get("train_accuracy"), logs.get("val_accuracy")
        if tr is not None and va is not None and va - tr > cfg.overfit_gap:
            self.warn(trainer, (
                f"epoch {epoch + 1}: validation accuracy {va:.3f} is {100 * (va - tr):.0f} points "
                f"above training accuracy {tr:.3f} (both in eval mode). On the same distribution "
                "this points to leakage or an evaluation bug (labels or windows shared across "
                "the split, a different normaliser, or metrics computed on the wrong array)."
            ))
        recalls = _val_recalls(logs)
        one = single_predicted_class(recalls)
        if one is not None:  # said at once, in red; the warning judges the kept model at the end
            (trainer.console or Console(stderr=True)).print(
                f"[bold red]COLLAPSE epoch {epoch + 1}: the model {ONE_CLASS} {one} on "
                f"validation (balanced accuracy {logs['val_balanced_accuracy']:.3f}, recalls "
                + ", ".join(f"{r:.2f}" for r in recalls) + ")[/]", highlight=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        """Judge the model the run ends with: early stopping restores its best epoch's weights
        (this runs before that restore, but that epoch's validation metrics are in the history)."""
        history = trainer.history_
        if not history:
            return
        es = trainer.early_stopping_
        kept = history[-1]
        if es is not None and es.restore_best and es.best_epoch is not None:
            kept = next((h for h in history if h["epoch"] == es.best_epoch + 1), kept)
        recalls = _val_recalls(kept)
        if not recalls:
            return
        which = f"the kept model (epoch {int(kept['epoch'])} of {len(history)} run)"
        one = single_predicted_class(recalls)
        n_one = sum(single_predicted_class(_val_recalls(h)) is not None for h in history)
        shown = ", ".join(f"class {k} {r:.2f}" for k, r in enumerate(recalls))
        if one is not None:
            self.warn(trainer, (
                f"{COLLAPSE}: {which} {ONE_CLASS} {one} on validation (recall {shown}; "
                f"balanced accuracy {kept['val_balanced_accuracy']:.3f}, what a constant "
                f"prediction scores); {n_one} of {len(history)} epochs predicted a single "
                "class. It has learned nothing beyond the majority class: try class weights "
                "(loss.class_weights=balanced), a lower learning rate, a longer horizon or "
                "other features; or accept that this target is not predictable from these inputs."
            ))
            return
        low = [(k, r) for k, r in enumerate(recalls) if r < self.config.min_class_recall]
        if low:
            self.warn(trainer, (
                f"{COLLAPSE}: validation recall below {self.config.min_class_recall} for class(es) "
                + ", ".join(f"{k} ({r:.2f})" for k, r in low)
                + f" in {which}. The model mostly predicts the other class(es); try class "
                "weights (loss.class_weights=balanced), focal loss, or more data."
            ))

    def state_dict(self) -> dict[str, Any]:
        return {"prev_loss": self.prev_loss, "digest": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_loss = state["prev_loss"]
        self.digest = state["digest"]
