"""Load a pretrained RNN encoder into a model, loudly: every target tensor is accounted for.

    report = transfer_encoder(model, "runs/pretrain/encoder", "full", expected_schema_hash=h)
    print(report)                     # "16/16 encoder tensors transferred" + per-layer lines
    groups = param_groups(model, report.transferred_names, base_lr=1e-3, encoder_lr=1e-4)

An encoder directory holds ``encoder.safetensors`` (keys ``encoder.rnn.*``; other keys such as
``mask_token`` or ``head.*`` are ignored) and ``encoder.json`` declaring the architecture:
``{"type": "lstm", "layers": 2, "hidden": 128, "bidirectional": true, "input_size": 4,
"feature_set": "ohlc4", "feature_schema_hash": "...", "window": 105}``.

Only RNN encoders over bars transfer: the target's encoder must be an RNNEncoder (config kinds
``lstm``/``gru``) with ``patch`` 1. Transformer and convolutional encoders (``transformer``,
``inception_time``, ``resnet1d``) and patched RNNs are refused with IncompatibleEncoderError.

Modes:
    full          same architecture; every ``encoder.rnn.*`` tensor must match by name and
                  shape, otherwise IncompatibleEncoderError (never a silent partial load).
    forward-only  bidirectional source -> unidirectional target (same type and hidden size).
                  Layer 0's forward tensors transfer exactly. A layer transfers ALL of its
                  tensors or NONE, and layers >= 1 transfer none: the unidirectional layer k
                  reads ``hidden`` inputs where the bidirectional one read ``2 * hidden``
                  (both directions' outputs), so its input weights cannot be carried over
                  (slicing them changes the function), and its recurrent weights were trained
                  jointly with those input weights. ``*_reverse`` source tensors are unused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from moola.models.encoders import RNNEncoder

__all__ = [
    "ENCODER_META",
    "ENCODER_WEIGHTS",
    "TRANSFER_ENCODER_KINDS",
    "EncoderCheckpointError",
    "EncoderSpec",
    "IncompatibleEncoderError",
    "TensorTransfer",
    "TransferMode",
    "TransferReport",
    "check_encoder_schema",
    "encoder_param_names",
    "expected_rnn_shapes",
    "freeze",
    "param_groups",
    "read_encoder_dir",
    "transfer_encoder",
    "unfreeze",
]

ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_META = "encoder.json"
RNN_PREFIX = "encoder.rnn."  # the only source keys transfer reads
TransferMode = Literal["full", "forward-only"]
TensorStatus = Literal["transferred", "missing", "shape_mismatch", "skipped"]
_STATUS_TEXT = {
    "transferred": "transferred",
    "missing": "missing (not in source)",
    "shape_mismatch": "shape_mismatch",
    "skipped": "skipped (policy)",
}
_GATES = {"lstm": 4, "gru": 3}
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class EncoderCheckpointError(ValueError):
    """An encoder directory (or in-memory source) is missing, unreadable or inconsistent."""


class IncompatibleEncoderError(ValueError):
    """The source encoder cannot be loaded into the target; the message names every tensor."""

    def __init__(self, message: str, report: TransferReport | None = None) -> None:
        super().__init__(message)
        self.report = report  # the plan that was refused, for inspection


# --- the source: encoder.json + encoder.safetensors ------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """An RNN encoder's architecture and provenance, as declared by ``encoder.json``."""

    kind: Literal["lstm", "gru"]  # "type" in encoder.json
    layers: int
    hidden: int
    bidirectional: bool
    input_size: int
    feature_set: str | None = None
    feature_schema_hash: str | None = None
    window: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = ENCODER_META) -> EncoderSpec:
        """Validate the JSON contract; every problem is reported at once, naming ``source``."""
        problems: list[str] = []
        kind = data.get("type")
        if kind not in _GATES:
            problems.append(f"type: expected one of {sorted(_GATES)}, got {kind!r}")

        def pos_int(key: str, required: bool = True) -> int | None:
            v = data.get(key)
            if v is None and not required:
                return None
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{key}: expected a positive integer, got {v!r}")
                return None
            return v

        def opt_str(key: str) -> str | None:
            v = data.get(key)
            if v is not None and not isinstance(v, str):
                problems.append(f"{key}: expected a string, got {v!r}")
                return None
            return v

        layers, hidden, input_size = pos_int("layers"), pos_int("hidden"), pos_int("input_size")
        window = pos_int("window", required=False)
        bidirectional = data.get("bidirectional")
        if not isinstance(bidirectional, bool):
            problems.append(f"bidirectional: expected true or false, got {bidirectional!r}")
        feature_set, schema = opt_str("feature_set"), opt_str("feature_schema_hash")
        if problems:
            raise EncoderCheckpointError(
                f"{source}: invalid encoder spec:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        assert layers is not None and hidden is not None and input_size is not None
        assert kind == "lstm" or kind == "gru"
        return cls(kind, layers, hidden, bool(bidirectional), input_size, feature_set, schema, window)

    @classmethod
    def from_encoder(cls, encoder: RNNEncoder, **provenance: Any) -> EncoderSpec:
        """The spec of a live RNNEncoder (``provenance``: feature_set, feature_schema_hash, window)."""
        if encoder.patch != 1:  # its RNN reads patch embeddings, not bars: encoder.json cannot say so
            raise IncompatibleEncoderError(
                f"a patched RNN encoder (patch {encoder.patch}) has no encoder.json form: the spec "
                f"describes an RNN that reads {encoder.input_size} features per bar, and its "
                f"patch_embed weights are not part of an encoder checkpoint; use patch 1")
        rnn = encoder.rnn
        kind: Literal["lstm", "gru"] = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
        return cls(kind, rnn.num_layers, rnn.hidden_size, rnn.bidirectional, rnn.input_size,
                   **provenance)

    def to_dict(self) -> dict[str, Any]:
        """The ``encoder.json`` form (key ``type`` for ``kind``)."""
        return {"type": self.kind, "layers": self.layers, "hidden": self.hidden,
                "bidirectional": self.bidirectional, "input_size": self.input_size,
                "feature_set": self.feature_set, "feature_schema_hash": self.feature_schema_hash,
                "window": self.window}

    def describe(self) -> str:
        """One line, e.g. 'lstm 2x128 bidirectional, input 4'."""
        dirs = "bidirectional" if self.bidirectional else "unidirectional"
        return f"{self.kind} {self.layers}x{self.hidden} {dirs}, input {self.input_size}"


def expected_rnn_shapes(spec: EncoderSpec) -> dict[str, tuple[int, ...]]:
    """Every ``encoder.rnn.*`` name and shape an nn.LSTM/nn.GRU of ``spec`` has, in layer order."""
    g, h = _GATES[spec.kind], spec.hidden
    out: dict[str, tuple[int, ...]] = {}
    for k in range(spec.layers):
        width = spec.input_size if k == 0 else h * (2 if spec.bidirectional else 1)
        for suffix in ("", "_reverse") if spec.bidirectional else ("",):
            out[f"{RNN_PREFIX}weight_ih_l{k}{suffix}"] = (g * h, width)
            out[f"{RNN_PREFIX}weight_hh_l{k}{suffix}"] = (g * h, h)
            out[f"{RNN_PREFIX}bias_ih_l{k}{suffix}"] = (g * h,)
            out[f"{RNN_PREFIX}bias_hh_l{k}{suffix}"] = (g * h,)
    return out


def _validate_source(
    spec: EncoderSpec, state: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The ``encoder.rnn.*`` tensors of ``state``, checked against the architecture ``spec`` declares."""
    rnn = {k: v for k, v in state.items() if k.startswith(RNN_PREFIX)}
    expected = expected_rnn_shapes(spec)
    problems = [f"{name}: declared {shape} but absent" for name, shape in expected.items()
                if name not in rnn]
    problems += [f"{name}: shape {tuple(rnn[name].shape)} != declared {shape}"
                 for name, shape in expected.items()
                 if name in rnn and tuple(rnn[name].shape) != shape]
    problems += [f"{name}: not part of the declared architecture" for name in rnn
                 if name not in expected]
    problems += [f"{name}: dtype {t.dtype} is not floating point" for name, t in rnn.items()
                 if not t.is_floating_point()]
    if problems:
        raise EncoderCheckpointError(
            f"{source}: tensors do not match the declared {spec.describe()}:\n"
            + "\n".join(f"  - {p}" for p in problems))
    return {name: rnn[name] for name in expected}


def read_encoder_dir(path: str | Path) -> tuple[EncoderSpec, dict[str, torch.Tensor]]:
    """Spec and ``encoder.rnn.*`` tensors of a pretrained encoder directory, validated together."""
    from safetensors.torch import load_file

    root = Path(path)
    meta_path, weights_path = root / ENCODER_META, root / ENCODER_WEIGHTS
    if not root.is_dir():
        raise EncoderCheckpointError(f"{root}: encoder directory does not exist")
    missing = [str(p) for p in (meta_path, weights_path) if not p.is_file()]
    if missing:
        raise EncoderCheckpointError(f"encoder directory {root} lacks {', '.join(missing)}")
    try:
        data = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderCheckpointError(f"{meta_path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise EncoderCheckpointError(f"{meta_path}: top level must be an object")
    spec = EncoderSpec.from_dict(data, source=str(meta_path))
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise EncoderCheckpointError(f"{weights_path}: not a readable safetensors file: {e}") from None
    return spec, _validate_source(spec, state, f"{weights_path} (declared by {meta_path})")


def check_encoder_schema(path: str | Path, schema_hash: str) -> EncoderSpec:
    """Refuse an encoder pretrained on other features before anything is scaled or trained:
    its normaliser and weights would otherwise fail later with a bare width error, or, for a
    set of the same width, run silently on features it never saw."""
    spec, _ = read_encoder_dir(path)
    if spec.feature_schema_hash is not None and spec.feature_schema_hash != schema_hash:
        raise IncompatibleEncoderError(
            f"encoder {path} was pretrained on feature schema {spec.feature_schema_hash} "
            f"(feature set {spec.feature_set}) but this data has {schema_hash}: the encoder and "
            f"its normaliser saw other features")
    return spec


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorTransfer:
    """What happened to one target encoder tensor, and why."""

    target: str
    status: TensorStatus
    target_shape: tuple[int, ...]
    source: str | None = None
    source_shape: tuple[int, ...] | None = None
    reason: str = ""

    def render(self) -> str:
        src = (f"{self.source} {self.source_shape}" if self.source is not None else "-")
        line = f"{self.target} {self.target_shape}: {_STATUS_TEXT[self.status]} <- {src}"
        return f"{line} ({self.reason})" if self.reason else line


@dataclass
class TransferReport:
    """Every target encoder tensor's fate, per-layer summaries and the unused source tensors."""

    mode: TransferMode
    source: str  # path or "<in-memory>"
    source_spec: EncoderSpec
    target_spec: EncoderSpec
    tensors: list[TensorTransfer]
    layers: list[str]  # one summary line per target layer and direction
    unused: dict[str, str] = field(default_factory=dict)  # source tensor -> why not used
    notes: list[str] = field(default_factory=list)

    @property
    def n_transferred(self) -> int:
        return sum(t.status == "transferred" for t in self.tensors)

    @property
    def n_target_encoder_tensors(self) -> int:
        return len(self.tensors)

    @property
    def transferred_names(self) -> list[str]:
        """Model parameter names loaded from the source: the ones to freeze or give their own LR."""
        return [t.target for t in self.tensors if t.status == "transferred"]

    @property
    def headline(self) -> str:
        return f"{self.n_transferred}/{self.n_target_encoder_tensors} encoder tensors transferred"

    def __str__(self) -> str:
        lines = [
            f"{self.headline} ({self.mode})",
            f"  source: {self.source_spec.describe()} [{self.source}]",
            f"  target: {self.target_spec.describe()}",
            *(f"  {n}" for n in self.notes),
            *(f"  {s}" for s in self.layers),
            "  tensors:",
            *(f"    {t.render()}" for t in self.tensors),
        ]
        if self.unused:
            by_reason: dict[str, list[str]] = {}
            for name, why in self.unused.items():
                by_reason.setdefault(why, []).append(name)
            lines.append(f"  source tensors not used: {len(self.unused)}")
            for why, names in by_reason.items():
                lines.append(f"    {len(names)} unused ({why}): {', '.join(names)}")
        return "\n".join(lines)


# --- planning and loading --------------------------------------------------------------------


TRANSFER_ENCODER_KINDS = ("lstm", "gru")  # config ``kind``s a pretrained encoder loads into


def _target_rnn(model: nn.Module) -> tuple[RNNEncoder, dict[str, nn.Parameter]]:
    """The target's RNNEncoder and its ``encoder.rnn.*`` parameters; anything else is refused."""
    encoder = getattr(model, "encoder", None)
    kind = getattr(getattr(getattr(model, "config", None), "encoder", None), "kind", None)
    named = f"{type(encoder).__name__} (encoder kind {kind!r})" if kind else type(encoder).__name__
    supported = " or ".join(repr(k) for k in TRANSFER_ENCODER_KINDS)
    if not isinstance(encoder, RNNEncoder):
        raise IncompatibleEncoderError(
            f"encoder transfer loads a pretrained LSTM/GRU and supports target encoder kinds "
            f"{supported} only (an RNNEncoder as .encoder); got {named}, which cannot take RNN weights")
    if encoder.patch != 1:
        raise IncompatibleEncoderError(
            f"encoder transfer needs an RNN that reads bars (patch 1); this model's {named} reads "
            f"patches of {encoder.patch} bars, so its first layer takes {encoder.hidden}-wide "
            f"patch embeddings where the pretrained one took {encoder.input_size} features")
    params = {f"encoder.rnn.{n}": p for n, p in encoder.rnn.named_parameters()}
    return encoder, params


def _layer_of(name: str) -> tuple[int, str]:
    """(layer, direction) of an RNN tensor name such as 'encoder.rnn.weight_ih_l1_reverse'."""
    tail = name.rsplit("_l", 1)[1]
    reverse = tail.endswith("_reverse")
    return int(tail.removesuffix("_reverse")), ("backward" if reverse else "forward")


def _layer_lines(tensors: list[TensorTransfer], reasons: Mapping[tuple[int, str], str]) -> list[str]:
    """'layer k direction: n/m tensors transferred' per target layer, with the reason for gaps."""
    groups: dict[tuple[int, str], list[TensorTransfer]] = {}
    for t in tensors:
        groups.setdefault(_layer_of(t.target), []).append(t)
    lines = []
    for (k, d), ts in groups.items():
        n = sum(t.status == "transferred" for t in ts)
        line = f"layer {k} {d}: {n}/{len(ts)} tensors transferred"
        if (k, d) in reasons:
            line = f"layer {k} {d}: {n}/{len(ts)} — {reasons[(k, d)]}"
        lines.append(line)
    return lines


def _shape_diff(t: TensorTransfer) -> str:
    if t.status == "missing":
        return f"{t.target}: missing in source (target shape {t.target_shape})"
    return f"{t.target}: source shape {t.source_shape} != target shape {t.target_shape}"


def _arch_diffs(src: EncoderSpec, tgt: EncoderSpec, fields: Iterable[str]) -> list[str]:
    names = {"kind": "type", "layers": "layers", "hidden": "hidden size",
             "bidirectional": "bidirectional", "input_size": "input size"}
    return [f"{names[f]}: source {getattr(src, f)} != target {getattr(tgt, f)}"
            for f in fields if getattr(src, f) != getattr(tgt, f)]


def _plan_full(src: EncoderSpec, tgt: EncoderSpec, state: Mapping[str, torch.Tensor],
               target: Mapping[str, nn.Parameter]) -> tuple[list[TensorTransfer], dict[str, str],
                                                            list[str]]:
    """Name-and-shape matching; the problems list is non-empty when the load must be refused."""
    tensors: list[TensorTransfer] = []
    for name, p in target.items():
        shape = tuple(p.shape)
        if name not in state:
            tensors.append(TensorTransfer(name, "missing", shape, reason="not in source"))
            continue
        s_shape = tuple(state[name].shape)
        if s_shape != shape:
            tensors.append(TensorTransfer(name, "shape_mismatch", shape, name, s_shape,
                                          f"source {s_shape} != target {shape}"))
        else:
            tensors.append(TensorTransfer(name, "transferred", shape, name, s_shape))
    unused = {n: "not in target" for n in state if n not in target}
    problems = _arch_diffs(src, tgt, ("kind", "layers", "hidden", "bidirectional", "input_size"))
    problems += [_shape_diff(t) for t in tensors if t.status != "transferred"]
    problems += [f"{n}: {tuple(state[n].shape)} in source but not in target" for n in unused]
    return tensors, unused, problems


def _plan_forward_only(src: EncoderSpec, tgt: EncoderSpec, state: Mapping[str, torch.Tensor],
                       target: Mapping[str, nn.Parameter]) -> tuple[
                           list[TensorTransfer], dict[str, str], list[str], dict[tuple[int, str], str]]:
    """Layer 0 forward transfers; layers >= 1 are skipped whole; extra target layers are missing."""
    problems = []
    if not src.bidirectional:
        problems.append("forward-only needs a bidirectional source; this one is unidirectional "
                        "(use mode='full' for a unidirectional -> unidirectional transfer)")
    if tgt.bidirectional:
        problems.append("forward-only needs a unidirectional target; this one is bidirectional "
                        "(use mode='full')")
    problems += _arch_diffs(src, tgt, ("kind", "hidden", "input_size"))
    tensors: list[TensorTransfer] = []
    reasons: dict[tuple[int, str], str] = {}
    h, bi_width = tgt.hidden, 2 * src.hidden
    for name, p in target.items():
        shape = tuple(p.shape)
        k, _ = _layer_of(name)
        s_shape = tuple(state[name].shape) if name in state else None
        if name not in state:
            tensors.append(TensorTransfer(name, "missing", shape,
                                          reason=f"source has {src.layers} layer(s)"))
            reasons[(k, "forward")] = f"layer {k} not in source ({src.layers} layer(s)): missing"
        elif k == 0 and s_shape != shape:
            t = TensorTransfer(name, "shape_mismatch", shape, name, s_shape,
                               f"source {s_shape} != target {shape}")
            tensors.append(t)
            problems.append(_shape_diff(t))
        elif k == 0:
            tensors.append(TensorTransfer(name, "transferred", shape, name, s_shape))
        elif name.rsplit(".", 1)[1].startswith("weight_ih"):
            why = (f"input width {bi_width} (bidirectional layer {k - 1} output) != {h} "
                   f"(unidirectional layer {k - 1} output)")
            tensors.append(TensorTransfer(name, "shape_mismatch", shape, name, s_shape,
                                          f"{why}; slicing input weights would change the function"))
            reasons[(k, "forward")] = (
                f"{why}: not transferred (its recurrent weights and biases match in shape but were "
                f"trained jointly with those input weights, so the layer is left at its init)")
        else:
            tensors.append(TensorTransfer(
                name, "skipped", shape, name, s_shape,
                f"layer {k} transfers whole or not at all; its input weights cannot be carried over"))
    unused: dict[str, str] = {}
    for n in state:
        k, d = _layer_of(n)
        if d == "backward":
            unused[n] = "backward direction"
        elif k >= tgt.layers:
            unused[n] = f"layer {k} not in target"
        elif k >= 1:
            unused[n] = f"layer {k} forward, not transferred (see layer {k})"
    return tensors, unused, problems, reasons


def transfer_encoder(
    model: nn.Module,
    source: str | Path | tuple[EncoderSpec, Mapping[str, torch.Tensor]],
    mode: TransferMode = "full",
    *,
    expected_schema_hash: str | None = None,
    strict: bool = True,
) -> TransferReport:
    """Load a pretrained encoder into ``model.encoder`` in place, or raise before touching it.

    ``source`` is an encoder directory or ``(spec, state)``. ``expected_schema_hash`` is the
    feature schema hash of the data the model will see; a source declaring another one is
    refused. ``strict`` also refuses a source that declares no hash when one is expected
    (False: a report note). Tensor checks are never relaxed: full mode loads all or nothing.
    """
    if mode not in get_args(TransferMode):
        raise ValueError(f"mode must be one of {get_args(TransferMode)}, got {mode!r}")
    if isinstance(source, tuple):
        src_spec, raw = source
        label = "<in-memory>"
        state = _validate_source(src_spec, raw, "in-memory encoder source")
    else:
        label = str(source)
        src_spec, state = read_encoder_dir(source)
    encoder, target = _target_rnn(model)
    tgt_spec = EncoderSpec.from_encoder(encoder)

    notes: list[str] = []
    provenance = []
    if src_spec.input_size != tgt_spec.input_size:
        provenance.append(f"input size: source {src_spec.input_size} features != target "
                          f"{tgt_spec.input_size}")
    if expected_schema_hash is not None:
        declared = src_spec.feature_schema_hash
        if declared is None:
            msg = (f"source declares no feature schema hash; expected {expected_schema_hash} "
                   f"cannot be checked")
            if strict:
                provenance.append(msg + " (pass strict=False to accept)")
            else:
                notes.append(f"warning: {msg}")
        elif declared != expected_schema_hash:
            provenance.append(
                f"feature schema hash: source {declared} (feature set {src_spec.feature_set}) != "
                f"expected {expected_schema_hash}: the encoder was pretrained on other features")
        else:
            notes.append(f"feature schema hash {declared} ({src_spec.feature_set}) matches the expected one")
    else:
        notes.append("feature schema not checked (no expected_schema_hash given)")
    if provenance:
        raise IncompatibleEncoderError(
            f"encoder from {label} does not fit this data:\n"
            + "\n".join(f"  - {p}" for p in provenance))

    reasons: dict[tuple[int, str], str] = {}
    if mode == "full":
        tensors, unused, problems = _plan_full(src_spec, tgt_spec, state, target)
    else:
        tensors, unused, problems, reasons = _plan_forward_only(src_spec, tgt_spec, state, target)
    report = TransferReport(mode, label, src_spec, tgt_spec, tensors,
                            _layer_lines(tensors, reasons), unused, notes)
    if problems:
        n, m = report.n_transferred, report.n_target_encoder_tensors
        hint = ("; for a bidirectional source and a unidirectional target use mode='forward-only'"
                if mode == "full" and src_spec.bidirectional and not tgt_spec.bidirectional else "")
        head = (f"{mode} transfer from {label} refused "
                f"(source {src_spec.describe()}, target {tgt_spec.describe()})")
        if mode == "full":
            head += f": only {n} of {m} target encoder tensors match, and a partial load is never done"
        raise IncompatibleEncoderError(
            head + hint + ":\n" + "\n".join(f"  - {p}" for p in problems), report)

    with torch.no_grad():
        for t in tensors:
            if t.status == "transferred":
                assert t.source is not None
                p = target[t.target]
                p.copy_(state[t.source].to(device=p.device, dtype=p.dtype))
    encoder.rnn.flatten_parameters()  # cuDNN wants one contiguous weight buffer
    return report


# --- after the transfer: freezing and learning rates -----------------------------------------


def encoder_param_names(model: nn.Module) -> list[str]:
    """Every parameter name under ``model.encoder`` (transferred ones: ``report.transferred_names``)."""
    return [n for n, _ in model.named_parameters() if n.startswith("encoder.")]


def _select(model: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    params = dict(model.named_parameters())
    wanted = list(names)
    unknown = [n for n in wanted if n not in params]
    if unknown:
        raise KeyError(f"not parameters of the model: {', '.join(unknown)}")
    return [params[n] for n in wanted]


def freeze(model: nn.Module, names: Iterable[str]) -> int:
    """Stop gradients for exactly these parameters (exact names, not a prefix); returns how many."""
    ps = _select(model, names)
    for p in ps:
        p.requires_grad_(False)
    return len(ps)


def unfreeze(model: nn.Module, names: Iterable[str]) -> int:
    """Let exactly these parameters train again; returns how many."""
    ps = _select(model, names)
    for p in ps:
        p.requires_grad_(True)
    return len(ps)


def param_groups(model: nn.Module, transferred_names: Iterable[str], base_lr: float,
                 encoder_lr: float) -> list[dict[str, Any]]:
    """Optimizer groups: transferred tensors at ``encoder_lr``, every other parameter at ``base_lr``.

    Frozen parameters are included so they train once unfrozen. Empty groups are left out.
    """
    chosen = set(transferred_names)
    _select(model, chosen)  # unknown names are an error, not a silently empty group
    pre = [p for n, p in model.named_parameters() if n in chosen]
    rest = [p for n, p in model.named_parameters() if n not in chosen]
    groups = [{"params": pre, "lr": encoder_lr, "name": "transferred_encoder"},
              {"params": rest, "lr": base_lr, "name": "base"}]
    return [g for g in groups if g["params"]]
