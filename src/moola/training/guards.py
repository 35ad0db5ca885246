"""Guards for the failures users have hit: each is a loud warning (or error) with advice.

- more parameters per training sample than ``max_params_per_sample`` (memorisation risk);
- an epoch with no optimizer step, or whose loss and weights did not change ("60 epochs in
  3 seconds" that trained nothing);
- validation accuracy far above training accuracy on the same distribution (leakage or an
  evaluation bug);
- class collapse: a class whose validation recall is below ``min_class_recall``.
Object-dtype / non-float inputs and NaN/inf batches are refused earlier, in
``moola.training.data`` and the loop itself.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import TYPE_CHECKING, Any

import torch

from moola.training.callbacks import Callback
from moola.training.config import GuardConfig

if TYPE_CHECKING:
    from moola.training.trainer import Trainer


class GuardWarning(UserWarning):
    """A training run looks wrong; the message says why and what to check."""


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class HealthGuard(Callback):
    """Emits ``GuardWarning`` s and records them in ``trainer.warnings``."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self.prev_loss: float | None = None
        self.digest: str | None = None

    def warn(self, trainer: Trainer, message: str) -> None:
        trainer.warnings.append(message)
        warnings.warn(message, GuardWarning, stacklevel=3)
        trainer.log(f"[bold red]WARNING[/] {message}")

    def on_fit_start(self, trainer: Trainer) -> None:
        n_params = sum(p.numel() for p in trainer.model.parameters())
        n = trainer.n_train
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
        if trainer.steps_in_epoch == 0:
            self.warn(trainer, (
                f"epoch {epoch + 1} made no optimizer step: the training set is empty or every "
                "batch was skipped. Nothing is being trained."
            ))
        digest = _weights_digest(trainer.model)
        loss = logs.get("train_loss")
        if self.prev_loss is not None and loss is not None and trainer.steps_in_epoch > 0:
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
        recalls = {k: v for k, v in logs.items() if k.startswith("val_recall_")}
        if recalls and epoch + 1 >= min(trainer.config.epochs, 2):
            low = {k.removeprefix("val_recall_"): v for k, v in recalls.items()
                   if v < cfg.min_class_recall}
            if low and (trainer.stop_training or epoch + 1 == trainer.config.epochs):
                self.warn(trainer, (
                    f"class collapse: validation recall below {cfg.min_class_recall} for class(es) "
                    + ", ".join(f"{k} ({v:.2f})" for k, v in sorted(low.items()))
                    + ". The model mostly predicts the other class(es); try class weights "
                    "(loss.class_weights=balanced), focal loss, or more data."
                ))

    def state_dict(self) -> dict[str, Any]:
        return {"prev_loss": self.prev_loss, "digest": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_loss = state["prev_loss"]
        self.digest = state["digest"]
