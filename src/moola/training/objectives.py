"""Objectives: what the one training loop optimises and measures.

Call order per batch (the loop guarantees it): ``prepare`` -> model forward -> ``loss`` ->
(backward, step) and, when measuring, ``collect``; per epoch ``metrics`` over the collected
arrays. Batches are ``dict[str, Tensor]`` with at least ``x`` (B, T, F).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Batch = dict[str, Tensor]
Outputs = dict[str, Tensor]


class Objective(ABC):
    """Base class. ``primary_metric`` is what early stopping uses when asked for 'auto'."""

    name: str = "objective"
    has_accuracy: bool = False
    # every key ``metrics`` may record, declared so sweeps and tuning can check a metric name
    # before training; ``{i}`` is a number (a class index, a horizon index or value)
    metric_names: tuple[str, ...] = ()
    # what the guards call class k in their warnings (its index when the objective has no names)
    class_names: tuple[str, ...] = ()

    def prepare(self, batch: Batch, training: bool) -> Batch:
        """Per-batch input transform (masking, augmentation); identity by default."""
        return batch

    @abstractmethod
    def loss(self, out: Outputs, batch: Batch) -> Tensor:
        """Scalar mean loss of the batch."""

    @abstractmethod
    def collect(self, out: Outputs, batch: Batch) -> dict[str, np.ndarray]:
        """Per-sample arrays needed by ``metrics`` (moved to CPU)."""

    @abstractmethod
    def metrics(self, collected: dict[str, np.ndarray]) -> dict[str, float]:
        """Epoch metrics from the concatenated ``collect`` arrays."""

    def prior_loss(self, counts: np.ndarray) -> float | None:
        """The loss of the best constant prediction given the training label ``counts`` per class
        (the class prior), the floor the trained-nothing guard compares the training loss with;
        None where the objective has no such floor."""
        return None


def expand_metric_names(templates: Iterable[str], numbers: Iterable[int] | None = None) -> tuple[str, ...]:
    """Declared names with ``{i}`` filled from ``numbers``; unknown numbers leave ``{i}`` in."""
    nums = None if numbers is None else list(numbers)
    out: list[str] = []
    for t in templates:
        out.extend([t.format(i=i) for i in nums] if "{i}" in t and nums is not None else [t])
    return tuple(out)


def metric_name_matches(name: str, names: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``names``, where a left-in ``{i}`` stands for any number."""
    return any(re.fullmatch(re.escape(n).replace(re.escape("{i}"), r"\d+"), name) for n in names)


def class_recalls(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) recall of each class, NaN for a class absent from ``y`` (undefined, not 0)."""
    y = np.asarray(y, dtype=np.int64)
    support = np.bincount(y, minlength=n_classes)[:n_classes]
    hits = np.bincount(y[np.asarray(pred) == y], minlength=n_classes)[:n_classes]
    return np.where(support > 0, hits / np.maximum(support, 1), np.nan)


def _constant_loss(mass: np.ndarray, norm: float) -> float:
    """min over a constant p of ``-sum_c mass_c log p_c / norm``: p = mass / sum(mass)."""
    total = float(mass.sum())
    if total <= 0 or norm <= 0:
        return float("nan")
    q = mass[mass > 0] / total
    return float(total / norm * -(q * np.log(q)).sum())


def _focal_ce(logits: Tensor, y: Tensor, weight: Tensor | None, gamma: float,
              smoothing: float) -> Tensor:
    """Cross-entropy, optionally focal: (1 - p_t)^gamma down-weights easy samples."""
    if gamma == 0.0:
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing)
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    n_cls = logits.shape[-1]
    target = F.one_hot(y, n_cls).float()
    if smoothing:
        target = target * (1 - smoothing) + smoothing / n_cls
    pt = logp.exp().gather(1, y[:, None]).squeeze(1)  # (B,)
    per = -(target * logp).sum(-1) * (1 - pt).pow(gamma)
    if weight is not None:
        w = weight[y]
        return (per * w).sum() / w.sum()
    return per.mean()


class ClassificationObjective(Objective):
    """Class logits (B, C) plus, when the model has one, the start/end pointer head."""

    name = "classification"
    has_accuracy = True
    # pointer_* only with a start/end pointer head
    metric_names = ("accuracy", "balanced_accuracy", "min_recall", "recall_{i}",
                    "pointer_mae", "pointer_hit3")

    def __init__(self, n_classes: int, *, class_weights: Tensor | None = None,
                 focal_gamma: float = 0.0, label_smoothing: float = 0.0,
                 pointer_weight: float = 0.5, class_names: Sequence[str] = ()) -> None:
        self.n_classes = n_classes
        self.class_names = tuple(class_names)
        self.class_weights = class_weights
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.pointer_weight = pointer_weight

    def loss(self, out: Outputs, batch: Batch) -> Tensor:
        w = None if self.class_weights is None else self.class_weights.to(out["logits"].device)
        loss = _focal_ce(out["logits"].float(), batch["y"], w, self.focal_gamma, self.label_smoothing)
        if "start_logits" in out and "pointers" in batch and self.pointer_weight > 0:
            p = batch["pointers"]  # (B, 2) bar offsets within the window
            ptr = F.cross_entropy(out["start_logits"].float(), p[:, 0]) + \
                F.cross_entropy(out["end_logits"].float(), p[:, 1])
            loss = loss + self.pointer_weight * ptr / 2
        return loss

    def collect(self, out: Outputs, batch: Batch) -> dict[str, np.ndarray]:
        got = {
            "proba": torch.softmax(out["logits"].float(), -1).detach().cpu().numpy(),
            "y": batch["y"].detach().cpu().numpy(),
        }
        if "start_logits" in out and "pointers" in batch:
            got["ptr_pred"] = torch.stack(
                [out["start_logits"].argmax(-1), out["end_logits"].argmax(-1)], 1
            ).cpu().numpy()
            got["ptr_true"] = batch["pointers"].cpu().numpy()
        return got

    def metrics(self, c: dict[str, np.ndarray]) -> dict[str, float]:
        """Accuracy, balanced accuracy and per-class recall; a class absent from ``y`` has recall
        NaN (undefined, not 0), so the guards can tell "never predicted" from "not there"."""
        y, pred = c["y"], c["proba"].argmax(1)
        rec = class_recalls(y, pred, self.n_classes)
        # scikit-learn's balanced accuracy: the mean recall of the classes present in y (with one
        # class, the accuracy); counted with bincount, as it costs ~20 ms a call there, every epoch
        bal = float(np.nanmean(rec)) if int(np.isfinite(rec).sum()) > 1 else float((pred == y).mean())
        m = {
            "accuracy": float((pred == y).mean()),
            "balanced_accuracy": bal,
            "min_recall": float(np.nanmin(rec)) if np.isfinite(rec).any() else float("nan"),
        }
        for k, r in enumerate(rec):
            m[f"recall_{k}"] = float(r)
        if "ptr_pred" in c:
            err = np.abs(c["ptr_pred"] - c["ptr_true"])
            m["pointer_mae"] = float(err.mean())
            m["pointer_hit3"] = float((err <= 3).all(1).mean())
        return m

    def prior_loss(self, counts: np.ndarray) -> float | None:
        """Weighted, smoothed cross-entropy of the best constant prediction (torch's weighting:
        the smoothing term weighs class c by w_c; the mean divides by the weights of the labels).
        None with focal loss, whose constant-prediction floor has no closed form."""
        if self.focal_gamma:
            return None
        n = np.zeros(self.n_classes)
        n[: min(len(counts), self.n_classes)] = np.asarray(counts, dtype=np.float64)[: self.n_classes]
        w = np.ones(self.n_classes) if self.class_weights is None \
            else self.class_weights.detach().cpu().double().numpy()
        eps = self.label_smoothing
        mass = (1 - eps) * w * n + eps / self.n_classes * n.sum() * w
        return _constant_loss(mass, float((w * n).sum()))


class DirectionObjective(Objective):
    """Binary direction: one logit (B,), BCE; ``y`` is 0/1."""

    name = "direction"
    has_accuracy = True
    metric_names = ("accuracy", "balanced_accuracy", "min_recall", "recall_{i}")

    def __init__(self, *, pos_weight: float | None = None, label_smoothing: float = 0.0,
                 class_names: Sequence[str] = ()) -> None:
        self.pos_weight = pos_weight
        self.class_names = tuple(class_names)
        self.label_smoothing = label_smoothing

    def loss(self, out: Outputs, batch: Batch) -> Tensor:
        y = batch["y"].float()
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=y.device)
        return F.binary_cross_entropy_with_logits(out["direction"].float(), y, pos_weight=pw)

    def collect(self, out: Outputs, batch: Batch) -> dict[str, np.ndarray]:
        p = torch.sigmoid(out["direction"].float()).detach().cpu().numpy()
        return {"proba": np.stack([1 - p, p], 1), "y": batch["y"].long().cpu().numpy()}

    def metrics(self, c: dict[str, np.ndarray]) -> dict[str, float]:
        return ClassificationObjective(2).metrics(c)

    def prior_loss(self, counts: np.ndarray) -> float | None:
        """BCE (with ``pos_weight`` and smoothing) of the best constant P(up), averaged over samples."""
        n0, n1 = (float(v) for v in np.pad(np.asarray(counts, dtype=np.float64), (0, 2))[:2])
        eps = self.label_smoothing
        pw = 1.0 if self.pos_weight is None else float(self.pos_weight)
        up = pw * (n1 * (1 - eps / 2) + n0 * eps / 2)  # the targets' mass on 'up', weighted
        down = n0 * (1 - eps / 2) + n1 * eps / 2
        return _constant_loss(np.array([down, up]), n0 + n1)


class RegressionObjective(Objective):
    """Forward-return regression over one or several horizons: (B, H), MSE; IC per horizon."""

    name = "regression"
    metric_names = ("mse", "ic_{i}")  # ic_<horizon index>, where predictions and targets vary

    def loss(self, out: Outputs, batch: Batch) -> Tensor:
        return F.mse_loss(out["regression"].float(), batch["y"].float().reshape(out["regression"].shape))

    def collect(self, out: Outputs, batch: Batch) -> dict[str, np.ndarray]:
        pred = out["regression"].detach().float().cpu().numpy()
        return {"pred": pred, "y": batch["y"].float().cpu().numpy().reshape(pred.shape)}

    def metrics(self, c: dict[str, np.ndarray]) -> dict[str, float]:
        pred, y = c["pred"], c["y"]
        m = {"mse": float(((pred - y) ** 2).mean())}
        for h in range(pred.shape[1]):
            if pred[:, h].std() > 0 and y[:, h].std() > 0:
                m[f"ic_{h}"] = float(np.corrcoef(pred[:, h], y[:, h])[0, 1])
        return m


class ReconstructionObjective(Objective):
    """Masked reconstruction: MSE over masked positions only (``mask`` (B, T) or (B, T, F)).

    ``prepare`` is supplied by the pretraining module (masking and augmentation); this class
    only scores. The target is ``batch['target']`` (the clean window).
    """

    name = "reconstruction"
    metric_names = ("masked_mse",)

    def loss(self, out: Outputs, batch: Batch) -> Tensor:
        return masked_mse(out["reconstruction"].float(), batch["target"].float(), batch["mask"])

    def collect(self, out: Outputs, batch: Batch) -> dict[str, np.ndarray]:
        err = (out["reconstruction"].float() - batch["target"].float()) ** 2  # (B, T, F)
        m = _expand_mask(batch["mask"], err).float()
        return {"sq_err": (err * m).sum((1, 2)).detach().cpu().numpy(),
                "n": m.sum((1, 2)).detach().cpu().numpy()}

    def metrics(self, c: dict[str, np.ndarray]) -> dict[str, float]:
        return {"masked_mse": float(c["sq_err"].sum() / max(c["n"].sum(), 1.0))}


def _expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask[..., None].expand_as(like) if mask.dim() == like.dim() - 1 else mask


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked entries only; unmasked positions contribute nothing."""
    m = _expand_mask(mask, pred).to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> Tensor:
    """sklearn's 'balanced': n / (C * count_c); absent classes get weight 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)
