"""Guards for the failures users have hit: each is a loud warning (or error) with advice.

- more parameters per training sample than ``max_params_per_sample`` (memorisation risk), naming
  the presets that are smaller for the run's features and classes;
- an epoch with no optimizer step, or whose loss and weights did not change ("60 epochs in
  3 seconds" that trained nothing);
- "trained nothing" (``TRAINED_NOTHING``), judged after the last epoch: no weight differs from
  the start; or the last epoch's training loss is not below (1 - ``trained_nothing_loss_tol``) x
  the loss of predicting the training labels' class frequencies (``Objective.prior_loss``; ln C
  for balanced classes) while neither the training accuracy nor the balanced accuracy is above
  the majority rate / 1 / C beyond noise (Wilson lower bound at ``interval_confidence``; an
  accurate but under-confident model has learned something); or the training accuracy is the
  majority-class rate and the balanced accuracy 1 / C (within ``trained_nothing_acc_tol``: a
  constant guess);
- validation accuracy above training accuracy on the same distribution (leakage or an
  evaluation bug): the Wilson intervals at ``interval_confidence`` (given n_val and the n of the
  training-eval subset) do not overlap, and the gap exceeds ``overfit_gap``. It is screened for
  free on the last quarter of the epoch's training pass (a gap the balanced accuracies do not
  show comes from the splits' class shares and is dropped) and only then confirmed in eval mode;
- class collapse, judged on the model the run ends with (the restored best epoch under early
  stopping, else the last): it predicts a single class on validation (every other class has
  recall <= ``SINGLE_CLASS_RECALL``; balanced accuracy ~= 1 / n_classes, no better than the
  majority class), or some class has validation recall below ``min_class_recall``; classes
  absent from the validation labels (recall NaN) are left out. It runs in ``on_fit_end``, which
  the trainer calls whatever ended the run (last epoch, early stopping, another callback's
  ``stop_training``, an exception). A single-class
  epoch is also printed in red as it happens. ``single_predicted_class`` is the one test of
  "predicts one class", shared with the run report (which applies it to the test split).
Object-dtype / non-float inputs and NaN/inf batches are refused earlier, in
``moola.training.data`` and the loop itself.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from moola._warnings import GuardWarning
from moola.training.callbacks import Callback
from moola.training.config import GuardConfig

if TYPE_CHECKING:
    from moola.training.trainer import Trainer


COLLAPSE = "class collapse"  # every collapse warning starts with this (the run report finds them)
ONE_CLASS = "predicts only class"  # ... and the single-class one says this
TRAINED_NOTHING = "trained nothing"  # every trained-nothing warning starts with this (run report)
TOO_GOOD = "too good to be true"  # the validation-above-training warning starts with this
# a class the model recalls at most this often is one it (almost) never predicts: 1 in 50
SINGLE_CLASS_RECALL = 0.02
# the leakage alarm's first eval-mode look covers max(validation size, this) training windows
CONFIRM_FIRST = 256


def single_predicted_class(recalls: Sequence[float]) -> int | None:
    """The index of the one class a model predicts, judged from per-class recalls (class order):
    every other class has recall <= ``SINGLE_CLASS_RECALL``. None when two or more classes are
    predicted. Recalls rather than predicted counts, because the training logs carry recalls.
    A NaN recall is a class absent from the labels: it is left out (fewer than two present
    classes: nothing to judge)."""
    present = [(k, r) for k, r in enumerate(recalls) if not math.isnan(r)]
    if len(present) < 2:
        return None
    alive = [k for k, r in present if r > SINGLE_CLASS_RECALL]
    return alive[0] if len(alive) == 1 else None


def wilson_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion observed on ``n`` samples; unlike the
    normal approximation it stays inside [0, 1] and is honest at small n and at 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def val_above_train(val_acc: float, n_val: int, train_acc: float, n_train: int,
                    confidence: float = 0.95, min_gap: float = 0.0) -> bool:
    """The leakage alarm's rule: validation accuracy is above training accuracy by more than
    ``min_gap`` and beyond sampling noise (val's Wilson lower bound above train's upper bound)."""
    if val_acc - train_acc <= min_gap:
        return False
    return wilson_interval(val_acc, n_val, confidence)[0] > wilson_interval(train_acc, n_train,
                                                                            confidence)[1]


def loss_unchanged(prev: float, loss: float, converged: float = 1e-4) -> bool:
    """A loss equal to the last epoch's to 1e-7 relative: a stalled run, unless it is already near
    zero (a memorised training set changes by less than that and is not a fault)."""
    return abs(loss) >= converged and abs(loss - prev) <= 1e-7 * abs(loss)


def class_label(k: int, names: Sequence[str]) -> str:
    """Class ``k`` as a reader knows it: its name (``up``), else ``class k``."""
    return names[k] if k < len(names) else f"class {k}"


def _one_name(k: int, names: Sequence[str]) -> str:
    """After "predicts only class": the name, or the bare index."""
    return names[k] if k < len(names) else str(k)


def _shown(recalls: Sequence[float], names: Sequence[str] = ()) -> str:
    return ", ".join(f"{class_label(k, names)} " + ("absent" if math.isnan(r) else f"{r:.2f}")
                     for k, r in enumerate(recalls))


def smaller_presets(model: torch.nn.Module, n_samples: int, max_ratio: float = 1000.0) -> str:
    """Advice naming presets smaller than ``model``, each built for its features and classes
    (the largest one within ``max_ratio`` first, else the smallest), or that none is smaller."""
    from moola.models import PRESETS, build_model, count_parameters, preset_config

    cfg = getattr(model, "config", None)
    n_params = sum(p.numel() for p in model.parameters())
    advice = "fewer layers or hidden units, more data, or pretraining"
    if cfg is None or not hasattr(cfg, "n_features"):
        return f"Use a smaller model: {advice}."
    n_classes = cfg.classifier.n_classes if cfg.classifier is not None else \
        (2 if cfg.direction is not None else None)
    sizes: dict[str, int] = {}
    with torch.random.fork_rng(devices=[]):  # building models must not move the run's RNG
        for name in PRESETS:
            try:
                sizes[name] = count_parameters(build_model(preset_config(
                    name, n_features=cfg.n_features, n_classes=n_classes)))
            except ValueError:  # a binary-only preset for a 3-class task
                continue
    smaller = sorted(((p, name) for name, p in sizes.items() if p < n_params), reverse=True)
    what = f"for {cfg.n_features} features and {n_classes or 'these'} classes"
    if not smaller:
        return f"No preset is smaller than {cfg.name} {what}: {advice}."
    n = max(n_samples, 1)
    fits = [(p, name) for p, name in smaller if p / n <= max_ratio]
    p, name = fits[0] if fits else smaller[-1]
    rest = ", ".join(f"{nm} ({q:,})" for q, nm in smaller if nm != name)
    head = (f"Use the smaller preset {name} ({p:,} parameters, {p / n:,.0f}:1) instead of "
            f"{cfg.name}" if fits else
            f"The smallest preset {what}, {name} ({p:,} parameters, {p / n:,.0f}:1), is still "
            f"above the limit: use it instead of {cfg.name} with more data or pretraining")
    return head + (f"; also smaller: {rest}." if rest else ".")


def _val_recalls(logs: Mapping[str, float]) -> list[float]:
    """``val_recall_0, val_recall_1, ...`` in class order (empty without validation metrics)."""
    out: list[float] = []
    while f"val_recall_{len(out)}" in logs:
        out.append(float(logs[f"val_recall_{len(out)}"]))
    return out


def _explained_by_class_shares(tr: float | None, va: float | None, min_gap: float) -> bool:
    """Validation accuracy above training accuracy while balanced accuracy (``tr``, ``va``) is
    not: the gap comes from the splits' class shares (a constant guess scores each split's
    majority share), not from leakage, so no eval-mode confirmation pass is spent on it."""
    if tr is None or va is None or math.isnan(tr) or math.isnan(va):
        return False
    return va - tr <= min_gap


def _val_learned(logs: Mapping[str, float], val_counts: np.ndarray | None, confidence: float) -> bool:
    """The epoch's validation balanced accuracy (eval mode, held-out windows) is above chance
    beyond noise: the model learned something, whatever the training pass's numbers say. The
    interval counts C x the rarest class's windows (a mean of C recalls is no surer than that)."""
    bal = logs.get("val_balanced_accuracy")
    present = val_counts[val_counts > 0] if val_counts is not None else np.zeros(0)
    if bal is None or math.isnan(bal) or len(present) < 2:
        return False
    n_eff = int(len(present) * present.min())
    return wilson_interval(bal, n_eff, confidence)[0] > 1 / len(present)


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
        self.start_digest: str | None = None  # the weights the run started from (kept on resume)

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
                + smaller_presets(trainer.model, n, self.config.max_params_per_sample)
            ))
        self.digest = _weights_digest(trainer.model)
        if self.start_digest is None:
            self.start_digest = self.digest

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
            same_loss = loss_unchanged(self.prev_loss, loss)
            if digest == self.digest or same_loss:
                what = "no weight changed" if digest == self.digest else "the loss did not change"
                self.warn(trainer, (
                    f"epoch {epoch + 1}: {what} (train_loss {loss:.6g}). Check the learning rate, "
                    "frozen parameters, a detached graph, or a constant target."
                ))
        self.prev_loss, self.digest = loss, digest
        # first against the training pass's last quarter (free, but dropout on and weights moving)
        late, n_late = trainer.late_pass_metrics()
        tr, va = late.get("accuracy", logs.get("train_accuracy")), logs.get("val_accuracy")
        n_va, n_tr = trainer.n_val_, n_late if "accuracy" in late else trainer.n_train_
        tr_bal = late.get("balanced_accuracy", logs.get("train_balanced_accuracy"))
        suspicious = tr is not None and va is not None and \
            val_above_train(va, n_va, tr, n_tr, cfg.interval_confidence, cfg.overfit_gap) \
            and not _explained_by_class_shares(tr_bal, logs.get("val_balanced_accuracy"), cfg.overfit_gap)
        if suspicious and va is not None:  # the pass's numbers (dropout on, weights moving): eval mode
            # first on a random share of the fixed subset at least validation's size (validation's
            # own interval is then the wider one); only where the share still alarms is the whole
            # subset evaluated, and judged
            n_tr = min(trainer.n_train_eval_, max(n_va, CONFIRM_FIRST))
            tr = trainer.train_eval_metrics(limit=n_tr).get("accuracy")
            if tr is not None and n_tr < trainer.n_train_eval_ and \
                    val_above_train(va, n_va, tr, n_tr, cfg.interval_confidence, cfg.overfit_gap):
                tr, n_tr = trainer.train_eval_metrics().get("accuracy"), trainer.n_train_eval_
        if suspicious and tr is not None and va is not None and \
                val_above_train(va, n_va, tr, n_tr, cfg.interval_confidence, cfg.overfit_gap):
            lo, hi = wilson_interval(va, n_va, cfg.interval_confidence)[0], \
                wilson_interval(tr, n_tr, cfg.interval_confidence)[1]
            self.warn(trainer, (
                f"{TOO_GOOD}: epoch {epoch + 1}: validation accuracy {va:.3f} (n={n_va}) is "
                f"{100 * (va - tr):.0f} points above training accuracy {tr:.3f} (n={n_tr}, both "
                f"in eval mode), beyond sampling noise ({cfg.interval_confidence:.0%} Wilson bounds "
                f"{lo:.3f} > {hi:.3f}). On the same distribution this points to leakage or an "
                "evaluation bug (labels or windows shared across the split, a different "
                "normaliser, or metrics computed on the wrong array)."
            ))
        recalls = _val_recalls(logs)
        one = single_predicted_class(recalls)
        if one is not None:  # said at once, in red; the warning judges the kept model at the end
            names = trainer.objective.class_names
            (trainer.console or Console(stderr=True)).print(
                f"[bold red]COLLAPSE epoch {epoch + 1}: the model {ONE_CLASS} "
                + escape(f"{_one_name(one, names)} on validation (balanced accuracy "
                         f"{logs['val_balanced_accuracy']:.3f}, recalls {_shown(recalls, names)})")
                + "[/]", highlight=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        """Judge the model the run ends with: early stopping restores its best epoch's weights
        (this runs before that restore, but that epoch's validation metrics are in the history)."""
        history = trainer.history_
        if not history:
            return
        self._trained_nothing(trainer, history)
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
        names = trainer.objective.class_names
        shown = _shown(recalls, names)
        if one is not None:
            self.warn(trainer, (
                f"{COLLAPSE}: {which} {ONE_CLASS} {_one_name(one, names)} on "
                f"validation (recall {shown}; "
                f"balanced accuracy {kept['val_balanced_accuracy']:.3f}, what a constant "
                f"prediction scores); {n_one} of {len(history)} epochs predicted a single "
                "class. It has learned nothing beyond the majority class: try class weights "
                "(loss.class_weights=balanced), a lower learning rate, a longer horizon or "
                "other features; or accept that this target is not predictable from these inputs."
            ))
            return
        # a class absent from validation (NaN) is not reported: its recall is undefined, not low
        low = [(k, r) for k, r in enumerate(recalls) if r < self.config.min_class_recall]
        if low:
            self.warn(trainer, (
                f"{COLLAPSE}: validation recall below {self.config.min_class_recall} for "
                + ", ".join(f"{class_label(k, names)} ({r:.2f})" for k, r in low)
                + f" in {which}. The model mostly predicts the other class(es); try class "
                "weights (loss.class_weights=balanced), focal loss, or more data."
            ))

    def _trained_nothing(self, trainer: Trainer, history: Sequence[Mapping[str, float]]) -> None:
        """One warning when the run ends no better than it began or than a constant guess of the
        class prior (the last epoch is judged: whether training moved at all, not which epoch
        early stopping keeps)."""
        last = history[-1]
        reasons: list[str] = []
        if self.start_digest is not None and _weights_digest(trainer.model) == self.start_digest:
            reasons.append(f"no weight differs from the start after {len(history)} epoch(s)")
        # judged on the last epoch's training pass first; when that looks like a constant guess
        # and validation (eval mode) does not show learning, it is confirmed in eval mode on the
        # fixed training subset (the pass runs dropout while the weights move, so it understates
        # what was learned)
        last_pass = (last.get("train_accuracy"), last.get("train_balanced_accuracy"), trainer.n_train_)
        found = self._constant_guess(trainer, last.get("train_loss"), *last_pass)
        if found and _val_learned(last, trainer.val_label_counts_, self.config.interval_confidence):
            found = []  # held-out windows, in eval mode, show it learned: no confirmation pass needed
        if found and trainer.objective.has_accuracy:
            ev = trainer.train_eval_metrics()
            found = self._constant_guess(trainer, last.get("train_loss"), ev.get("accuracy"),
                                         ev.get("balanced_accuracy"), trainer.n_train_eval_)
        reasons += found
        if reasons:
            self.warn(trainer, (
                f"{TRAINED_NOTHING}: " + "; ".join(reasons) + ". The model is no better than a "
                "constant guess. Check the learning rate (0 is only for smoke runs), frozen "
                "parameters and the labels (constant, shuffled, misaligned); if they are right, "
                "these inputs may not predict this target: train longer or with less "
                "regularisation to be sure, or change the features or horizon."
            ))

    def _constant_guess(self, trainer: Trainer, loss: float | None, acc: float | None,
                        bal: float | None, n_eval: int) -> list[str]:
        """The trained-nothing reasons that read accuracy (``acc``/``bal`` measured on ``n_eval``
        training samples): a loss at the class prior's and accuracy within noise of a constant."""
        cfg, reasons = self.config, []
        counts = trainer.train_label_counts_
        if counts is not None and counts.sum() > 0 and acc is not None and bal is not None:
            shares = "/".join(f"{c / counts.sum():.0%}" for c in counts)
            majority, chance = counts.max() / counts.sum(), 1 / max(int((counts > 0).sum()), 1)
            prior = trainer.objective.prior_loss(counts)
            model_cfg = getattr(trainer.model, "config", None)
            with_pointer = getattr(model_cfg, "pointer", None) is not None \
                and getattr(trainer.objective, "pointer_weight", 0) > 0  # its loss adds to train_loss
            conf = cfg.interval_confidence
            learned = wilson_interval(acc, n_eval, conf)[0] > majority \
                or wilson_interval(bal, n_eval, conf)[0] > chance  # beyond noise, if under-confident
            if prior is not None and math.isfinite(prior) and not with_pointer and not learned \
                    and loss is not None and loss > (1 - cfg.trained_nothing_loss_tol) * prior:
                reasons.append(
                    f"the last training loss {loss:.4f} is not below {prior:.4f}, the loss of "
                    f"predicting the class frequencies of the {int(counts.sum()):,} training labels "
                    f"({shares}), by more than {cfg.trained_nothing_loss_tol:.1%}, and training "
                    f"accuracy {acc:.3f} (balanced {bal:.3f}) is within noise of the majority-class "
                    f"rate {majority:.3f} ({chance:.3f})")
            tol = cfg.trained_nothing_acc_tol
            if acc <= majority + tol and bal <= chance + tol:
                reasons.append(
                    f"training accuracy {acc:.3f} is the majority-class rate {majority:.3f} and "
                    f"balanced accuracy {bal:.3f} is chance ({chance:.3f})")
        return reasons

    def state_dict(self) -> dict[str, Any]:
        return {"prev_loss": self.prev_loss, "digest": self.digest, "start_digest": self.start_digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_loss = state["prev_loss"]
        self.digest = state["digest"]
        self.start_digest = state.get("start_digest")  # absent in checkpoints before this guard
