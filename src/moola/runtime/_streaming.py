"""``StreamingMember``: one trained run served bar by bar, giving the numbers ``moola predict``
gives on the same bars.

Features: per symbol a rolling buffer of the last ``max_lookback + window`` bars; each tick the
run's feature set is computed by ``Predictor.features`` (the code training and ``moola
predict`` use) on that buffer's tail plus the new bars. Every registered feature set is a
finite-window function of the last ``lookback + 1`` bars (no EWM, no cumulative state), so this
equals the features on the whole history; tests/test_runtime_streaming.py checks it bit for bit
on the bundled BTC minutes for every registered set. No margin beyond ``max_lookback + window``
is therefore needed for exactness; the arrays hold up to twice that and are trimmed in one copy
when full, so appending a bar is amortised O(1).

Model: a unidirectional LSTM/GRU (no patching) is advanced by one batched step per layer per
bar over a ring of ``window`` staggered states (below). A served head that pools the ``last``
step reads the completed slot's state; one that pools over every step (the classifier's
attention, mean pooling) reads that slot's top-layer outputs of its window's bars, which the
ring keeps by bar (the last ``window`` bars' outputs of every slot, (window, window, H) per
symbol). Any other model (Transformer, bidirectional, patched)
reads the whole window through ``Predictor.predict_windows`` each tick: a tick's few windows
through the Predictor's single-window engine (ONNX Runtime where installed), a larger backfill
in one eager batch.

Why a ring: the full-window forward starts from a zero state at the window's first bar, so one
state carried along the stream has seen every bar since the start and is not the window's
output. Slot ``s % window`` holds the state started (from zero) at bar ``s``; each bar advances
all ``window`` slots at once, emits the slot that has now seen exactly ``window`` bars (the
full-window forward's last step) and zeroes it to start the next window.

Shared features: members of one ensemble serve one feature set (the ensemble's agreement
check), so a :class:`FeatureStream` computes each tick's features once for all of them (on a
buffer sized for the member that reads the most rows); a member attached to it takes its rows
from there whenever they equal what its own buffer would give, and computes its own otherwise
(after a reset, until its look-back is full again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from torch import nn

from moola.data import TS_DTYPE, Timeframe
from moola.datasets.tasks import symbol_ids
from moola.datasets.windows import WindowSet, nan_rows
from moola.features import FeatureMatrix
from moola.inference import IncompatibleBarsError, Predictor, calibrated, head_values
from moola.models import DirectionHead, ModelConfig, RNNEncoderConfig, SymbolEmbedding, fold_attention

__all__ = ["BarOrderError", "FeatureStream", "MemberStep", "NotStreamableError", "SharedFeatures",
           "StreamingMember", "ring_refusal", "share_features"]

OHLCV = ("open", "high", "low", "close", "volume")
Reason = Literal["warmup", "gap", "nan_features"]


class NotStreamableError(ValueError):
    """A run whose served output a per-symbol bar stream cannot reproduce exactly."""


class BarOrderError(ValueError):
    """A bar at or before the last bar already stepped for its symbol."""


@dataclass(frozen=True)
class MemberStep:
    """One bar served: P(up) (temperature-calibrated; None when no valid window ends here),
    the model's own P(up) before calibration, why not (``warmup``: fewer than
    ``required_bars`` bars since the start or a reset; ``gap``: a missing bar inside the
    window; ``nan_features``: a non-finite feature inside it), and the bar's feature row as
    computed, before normalisation."""

    symbol: str
    ts: datetime
    proba_up: float | None
    reason: Reason | None
    features: np.ndarray = field(repr=False)  # (F,) float32
    raw_proba_up: float | None = None


def ring_refusal(cfg: ModelConfig) -> str | None:
    """Why the staggered-state ring cannot serve this model exactly, or None when it can."""
    enc = cfg.encoder
    if not isinstance(enc, RNNEncoderConfig):
        return f"encoder {enc.kind!r} is not recurrent"
    if enc.bidirectional:
        return "the encoder is bidirectional (its backward half reads the window from its end)"
    if enc.patch != 1:
        return f"the encoder reads patches of {enc.patch} bars (a patch sees bars after its first)"
    if cfg.classifier is None and cfg.direction is None:
        return "the model has no classifier or direction head to serve a probability"
    return None


def pools_last(cfg: ModelConfig) -> bool:
    """The served head reads the last step only (the ring's completed state), not every step."""
    return cfg.classifier is None and cfg.direction is not None and cfg.direction.pooling == "last"


class _Ring:
    """``window`` staggered states of a stacked unidirectional LSTM/GRU (eval mode), advanced
    together. Layer 0's input projection of the new bar is computed once for all slots; LSTM
    gate columns are reordered to (i, f, o, g) so one sigmoid covers three gates."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, window: int) -> None:
        self.lstm = isinstance(rnn, nn.LSTM)
        self.window = window
        self.hidden = H = rnn.hidden_size
        self.layers = rnn.num_layers
        order = (torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
                 if self.lstm else torch.arange(3 * H))
        self.w_ih: list[torch.Tensor] = []  # (in, G*H) transposed, contiguous
        self.w_hh: list[torch.Tensor] = []  # (H, G*H)
        self.b_ih: list[torch.Tensor] = []  # (G*H,)
        self.b_hh: list[torch.Tensor] = []
        with torch.no_grad():
            for k in range(self.layers):
                zero = torch.zeros(len(order))
                w_ih = getattr(rnn, f"weight_ih_l{k}").detach().float()[order]
                w_hh = getattr(rnn, f"weight_hh_l{k}").detach().float()[order]
                b_ih = getattr(rnn, f"bias_ih_l{k}", None)
                b_hh = getattr(rnn, f"bias_hh_l{k}", None)
                self.w_ih.append(w_ih.t().contiguous())
                self.w_hh.append(w_hh.t().contiguous())
                self.b_ih.append(zero if b_ih is None else b_ih.detach().float()[order].clone())
                self.b_hh.append(zero if b_hh is None else b_hh.detach().float()[order].clone())
        # the LSTM adds both biases to the same pre-activation: fold them (one add less a step)
        self.b = [bi + bh for bi, bh in zip(self.b_ih, self.b_hh, strict=True)]

    def zeros(self) -> torch.Tensor:
        """Fresh state (layers, 2 for LSTM h and c / 1 for GRU h, window, H)."""
        return torch.zeros(self.layers, 2 if self.lstm else 1, self.window, self.hidden)

    def restart(self, state: torch.Tensor, slot: int) -> None:
        """Zero one slot: the state that starts at the next bar."""
        state[:, :, slot].zero_()

    def advance(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Advance every slot by the bar ``x`` (1, F), in place; the top layer's h (W, H)."""
        H = self.hidden
        inp = x
        for k in range(self.layers):
            h = state[k, 0]
            if self.lstm:
                c = state[k, 1]
                if k == 0:  # (1, 4H) shared by every slot
                    g = torch.addmm(torch.addmm(self.b[k], inp, self.w_ih[k]), h, self.w_hh[k])
                else:
                    g = torch.addmm(self.b[k], inp, self.w_ih[k]).addmm_(h, self.w_hh[k])
                sig = torch.sigmoid(g[:, :3 * H])  # i, f, o
                c.mul_(sig[:, H:2 * H]).addcmul_(sig[:, :H], torch.tanh(g[:, 3 * H:]))
                h.copy_(sig[:, 2 * H:]).mul_(torch.tanh(c))
            else:
                gi = torch.addmm(self.b_ih[k], inp, self.w_ih[k])  # (1 or W, 3H): r, z, n
                gh = torch.addmm(self.b_hh[k], h, self.w_hh[k])  # (W, 3H)
                rz = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H])
                n = torch.tanh(gi[:, 2 * H:] + rz[:, :H] * gh[:, 2 * H:])
                h.sub_(n).mul_(rz[:, H:]).add_(n)  # (1 - z) n + z h
            inp = h
        return inp


@dataclass
class _Symbol:
    """One symbol's stream: its bar buffer, bar count since reset, and (ring) states."""

    ts: np.ndarray  # (cap,) int64 epoch ns
    values: np.ndarray  # (cap, C) float64 bar columns
    n: int = 0  # bars held
    seen: int = 0  # bars stepped since the start or the last reset
    valid_from: int = 0  # earliest bar a valid window may start at
    why: Reason = "warmup"  # what set valid_from last
    state: torch.Tensor | None = None  # ring states (layers, 2|1, window, H)
    # the last ``window`` bars' top-layer outputs of every slot, row ``t % window`` for bar t
    # (window bars, window slots, H): a completed slot's sequence, for a head pooling every step
    history: torch.Tensor | None = None


class StreamingMember:
    """A ``Predictor`` served one bar at a time per symbol, equal to ``Predictor.predict_frame``
    on the same bars (features bit for bit, probabilities to float rounding).

    ``recurrent``: None uses the ring whenever :func:`ring_refusal` allows it, True requires it
    (error otherwise), False always reads the full window. Refused at construction: runs
    trained on symbol-aligned bars or a panel feature set (a symbol's features would depend on
    other symbols' bars), daily bars (gaps are judged on the whole panel's calendar), and runs
    without an ``up`` class. Call order: :meth:`step_bars` / :meth:`step` per tick, in
    increasing ``ts`` per symbol; :meth:`reset` forgets a symbol (it warms up again).
    """

    def __init__(self, predictor: Predictor, *, timeframe: Timeframe | str | None = None,
                 recurrent: bool | None = None) -> None:
        self.predictor = predictor
        src = predictor.run_dir_
        m = predictor.manifest_
        tf = predictor.timeframe_
        if timeframe is not None:
            want = Timeframe(timeframe)
            if tf is not None and want != tf:
                raise IncompatibleBarsError(f"{src}: the run was trained on {tf.value} bars, the "
                                            f"stream is {want.value}")
            tf = want
        if tf is None:
            raise NotStreamableError(f"{src}: the manifest records no timeframe; pass timeframe=")
        if not tf.is_intraday:
            raise NotStreamableError(f"{src}: {tf.value} bars: daily gaps are judged on the whole "
                                     "panel's trading calendar, which one symbol's stream lacks")
        if m.aligned:
            raise NotStreamableError(f"{src}: the run was trained on symbol-aligned bars (data.align); "
                                     "a per-symbol stream cannot cut bars to the shared timestamps")
        if predictor.feature_set_.kind != "per_symbol":
            raise NotStreamableError(f"{src}: feature set {predictor.feature_set_.name!r} is "
                                     f"{predictor.feature_set_.kind!r}: it reads other symbols' bars")
        if "up" not in predictor.classes_:
            raise NotStreamableError(f"{src}: the run's classes {predictor.classes_} have no 'up' "
                                     "to serve P(up) for")
        self.timeframe: Timeframe = tf
        self.window: int = predictor.window_
        self.max_lookback: int = predictor.feature_set_.max_lookback
        self.columns: tuple[str, ...] = OHLCV + (("adj_close",) if "adj_close" in m.bar_columns else ())
        self._up = predictor.classes_.index("up")
        cfg = predictor.model_config_
        why = ring_refusal(cfg)
        if recurrent and why is not None:
            raise NotStreamableError(f"{src}: model {cfg.name!r} cannot be streamed recurrently: {why}")
        self.recurrent: bool = why is None if recurrent is None else recurrent
        self.why_full_window: str | None = None if self.recurrent else (why or "recurrent=False")
        self._ring: _Ring | None = None
        self._mlp: nn.Module | None = None  # the direction head's MLP, after its 'last' pooling
        self._head: nn.Module | None = None  # else the served head, over the slot's history
        self._embed: dict[str, torch.Tensor] = {}  # symbol -> (1, D) embedding (pooled runs)
        if self.recurrent:
            model = predictor.model_.eval()
            rnn = getattr(getattr(model, "encoder", None), "rnn", None)
            heads = getattr(model, "heads", None)
            if not isinstance(rnn, nn.LSTM | nn.GRU) or not isinstance(heads, nn.ModuleDict):
                raise NotStreamableError(f"{src}: {type(model).__name__} has no encoder.rnn "
                                         "LSTM/GRU and heads to stream")
            served = "classifier" if cfg.classifier is not None else "direction"
            if served not in heads:
                raise NotStreamableError(f"{src}: the model has no heads[{served!r}]; it has "
                                         f"{', '.join(heads) or 'none'}")
            head = heads[served]
            if pools_last(cfg):
                if not isinstance(head, DirectionHead):
                    raise NotStreamableError(f"{src}: heads['direction'] is {type(head).__name__}")
                self._mlp = head.mlp
            else:  # a copy whose attention pooling is folded (one whole sequence a bar)
                self._head = fold_attention(head)
            self._ring = _Ring(rnn, self.window)
        else:
            predictor.serving_engine()  # built and checked now, not in the first tick
        self._symbols: dict[str, _Symbol] = {}
        self.shared: FeatureStream | None = None  # set by FeatureStream(members)
        self.feature_passes = 0  # feature computations on its own buffer (shared ones not counted)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def required_bars(self) -> int:
        """Bars per symbol before the first probability: look-back + window."""
        return self.max_lookback + self.window

    @property
    def tail(self) -> int:
        """Rows before a tick's new bars its features and windows read: the ring needs the
        look-back only, the full window also the window's earlier rows and their look-back; at
        least one, the bar before, from which the first new bar's gap is judged."""
        return max(1, self.max_lookback + (0 if self.recurrent else self.window - 1))

    def last_ts(self, symbol: str) -> datetime | None:
        """The last bar stepped for ``symbol`` (None: none since the start or a reset)."""
        s = self._symbols.get(symbol)
        if s is None or s.n == 0:
            return None
        return pl.Series([int(s.ts[s.n - 1])]).cast(TS_DTYPE).item()

    def reset(self, symbol: str | None = None) -> None:
        """Forget ``symbol``'s bars and state (all symbols when None): it warms up again."""
        if symbol is None:
            self._symbols.clear()
        else:
            self._symbols.pop(symbol, None)

    def _state(self, symbol: str) -> _Symbol:
        s = self._symbols.get(symbol)
        if s is None:
            if self.predictor.model_config_.symbol_embedding is not None:
                sid = symbol_ids(pl.Series([symbol]), list(self.predictor.manifest_.symbols))
                emb = getattr(self.predictor.model_, "symbol_embedding", None)
                if not isinstance(emb, SymbolEmbedding):
                    raise NotStreamableError(f"{self.predictor.run_dir_}: the config has a symbol "
                                             "embedding, the model none")
                with torch.no_grad():
                    self._embed[symbol] = emb.proj(emb.table(torch.from_numpy(sid))).float()  # (1, D)
            cap = 2 * self.required_bars
            s = _Symbol(ts=np.zeros(cap, np.int64), values=np.zeros((cap, len(self.columns))))
            if self._ring is not None:
                s.state = self._ring.zeros()
                if self._head is not None:
                    s.history = torch.zeros(self.window, self.window, self._ring.hidden)
            self._symbols[symbol] = s
        return s

    # ------------------------------------------------------------------------ step
    def step(self, symbol: str, bar: Mapping[str, Any]) -> float | None:
        """P(up) at the close of ``bar`` (``ts`` and the bar columns), None in warm-up or when
        the window holds a gap or a non-finite feature."""
        row = {"symbol": [symbol], "ts": [bar["ts"]], **{c: [float(bar[c])] for c in self.columns}}
        return self.step_bars(pl.DataFrame(row))[0].proba_up

    def step_bars(self, bars: pl.DataFrame) -> list[MemberStep]:
        """Serve new closed bars of any symbols (several per symbol after a backfill), sorted by
        (symbol, ts): one feature pass for all of them, one result per bar in that order."""
        parsed = self.shared.parsed_for(bars) if self.shared is not None else None
        checked = _check_bars(bars, self.columns, self._symbols, parsed=parsed)
        if not checked:
            return []
        cur = self.shared.current if self.shared is not None else None
        if cur is not None and all(self._in_sync(name, ts, values, cur) for name, ts, values in checked):
            for name, ts, values in checked:
                _append(self._state(name), ts, values, self.required_bars)
            fm, bad, gaps = cur.fm, cur.bad, cur.gaps
            news = [(name, cur.rows[name][0], len(ts)) for name, ts, _ in checked]
        else:
            frame, news = _take(checked, self._state, self.tail, self.required_bars, self.columns)
            fm = self.predictor.features(frame, self.timeframe, serving=True)
            self.feature_passes += 1
            bad = nan_rows(fm.values)
            gaps = fm.keys.get_column("gap_before").to_numpy()
        stamps = fm.keys.get_column("ts")
        out: list[MemberStep] = []
        window_rows: list[tuple[int, int]] = []  # (index into out, window end row in fm)
        for sym, stop, k in news:  # stop: end row of the symbol's slice in fm
            s = self._symbols[sym]
            for j, row in enumerate(range(stop - k, stop)):
                t = s.seen + j  # the bar's index since the start/reset
                if gaps[row] and t >= s.valid_from:
                    s.valid_from, s.why = t, "gap"
                if bad[row] and t + 1 > s.valid_from:
                    s.valid_from, s.why = t + 1, "warmup" if t < self.max_lookback else "nan_features"
                ok = t - self.window + 1 >= s.valid_from
                reason: Reason | None = None
                if not ok:
                    reason = "warmup" if t < self.required_bars - 1 or s.why == "warmup" else s.why
                out.append(MemberStep(sym, stamps[row], None, reason, fm.values[row].copy()))
                if ok and not self.recurrent:
                    window_rows.append((len(out) - 1, row))
            if self.recurrent:
                self._advance(sym, s, fm.values[stop - k:stop], out, len(out) - k)
            s.seen += k
        if window_rows:
            self._full_windows(fm, window_rows, out)
        return out

    def _in_sync(self, name: str, ts: np.ndarray, values: np.ndarray, cur: SharedFeatures) -> bool:
        """Whether the shared tick's rows for ``name`` are the rows this member's own buffer
        would give: the same new bars after the same last bar, and either the same history
        (bars since the start or reset) or one where every row this member reads has its full
        look-back in both (features are finite-window functions of the last ``lookback + 1``
        bars): the member has seen its look-back, the shared buffer the member's tail."""
        got = cur.rows.get(name)
        if got is None:
            return False
        _end, seen_before, last_before = got
        if not (np.array_equal(cur.ts[name], ts) and np.array_equal(cur.values[name], values)):
            return False
        s = self._symbols.get(name)
        seen, last = (0, -1) if s is None or s.n == 0 else (s.seen, int(s.ts[s.n - 1]))
        return last_before == last and (
            seen_before == seen or (seen >= self.max_lookback and seen_before >= min(seen, self.tail)))

    def _advance(self, sym: str, s: _Symbol, rows: np.ndarray, out: list[MemberStep], at: int) -> None:
        """Feed the new (k, F) feature rows through the ring; fill P(up) into ``out[at:at + k]``
        where a window is valid."""
        assert self._ring is not None and s.state is not None
        x = rows if self.predictor.normalizer_ is None else self.predictor.normalizer_.transform(rows)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            for j in range(len(rows)):
                values = self._ring_step(sym, s, s.seen + j, xt[j:j + 1], out[at + j].reason is None)
                if values is not None:
                    out[at + j] = self._with_proba(out[at + j], values)

    def _ring_step(self, sym: str, s: _Symbol, t: int, x: torch.Tensor, serve: bool) -> np.ndarray | None:
        """Advance ``s``'s ring by its bar ``t`` (normalised, (1, F)); with ``serve`` the (C,)
        raw probabilities of the window that ends there (the slot that has seen ``window`` bars)."""
        assert self._ring is not None and s.state is not None
        W = self.window
        top = self._ring.advance(s.state, x)  # (W, H)
        slot = (t + 1) % W  # the state started at bar t - W + 1: it has seen W bars
        if s.history is not None:  # one contiguous row per bar (filing by slot position is 10x dearer)
            s.history[t % W] = top
        values = self._served(sym, s, top, slot) if serve else None
        self._ring.restart(s.state, slot)
        return values

    def _served(self, sym: str, s: _Symbol, top: torch.Tensor, slot: int) -> np.ndarray:
        """(C,) raw probabilities of the window the completed ``slot`` has seen."""
        cfg = self.predictor.model_config_
        if self._mlp is not None:  # 'last' pooling: the slot's state is all the head reads
            h = top[slot:slot + 1]  # (1, H)
            if sym in self._embed:
                h = h + self._embed[sym]
            return head_values({"direction": self._mlp(h).squeeze(-1)}, cfg)[0]
        assert self._head is not None and s.history is not None
        seq = s.history[:, slot]  # (W, H): rows are bars mod W, the oldest (slot's first) at row slot
        seq = torch.cat([seq[slot:], seq[:slot]])[None]  # (1, W, H), oldest first: the encoder's output
        if sym in self._embed:  # added to every step, as the model's symbol embedding does
            seq = seq + self._embed[sym][:, None]
        return head_values(self._head(seq), cfg)[0]

    def _full_windows(self, fm: FeatureMatrix, rows: Sequence[tuple[int, int]],
                      out: list[MemberStep]) -> None:
        """The windows ending at ``rows`` through ``Predictor.predict_windows``: a tick's few
        windows one at a time through its single-window engine (equal to the eager model to
        ``ENGINE_ATOL``; a window's result does not depend on the others in the tick), a
        backfill of more than ``SMALL_BATCH`` in one eager batch padded to ``MIN_BATCH``."""
        ends = np.asarray([r for _, r in rows], dtype=np.int64)
        ws = WindowSet(fm, ends - (self.window - 1), self.window)
        values = self.predictor.predict_windows(ws)
        for (i, _), v in zip(rows, values, strict=True):
            out[i] = self._with_proba(out[i], v)

    def _with_proba(self, step: MemberStep, values: np.ndarray) -> MemberStep:
        """``step`` with P(up) from its (C,) raw probabilities, temperature-scaled as
        ``predict`` scales them."""
        t = self.predictor.temperature_
        cal = values[None] if t is None else calibrated(values[None], t)
        return MemberStep(step.symbol, step.ts, float(cal[0, self._up]), None, step.features,
                          float(values[self._up]))

    def __repr__(self) -> str:
        path = "recurrent ring" if self.recurrent else f"full window ({self.why_full_window})"
        return (f"StreamingMember({self.predictor.run_dir_}, {self.window}-bar windows, "
                f"{self.required_bars} bars per symbol, {path}, {len(self._symbols)} symbols)")


@dataclass(frozen=True)
class SharedFeatures:
    """One tick's features from a :class:`FeatureStream`: the matrix over every symbol's tail
    plus new bars, its non-finite rows and gaps, and per symbol (end row in the matrix, bars
    seen before the tick, last bar before it as epoch ns or -1) and the new bars taken."""

    fm: FeatureMatrix
    bad: np.ndarray  # (N,) bool
    gaps: np.ndarray  # (N,) bool
    rows: dict[str, tuple[int, int, int]]
    ts: dict[str, np.ndarray]  # (k,) int64 epoch ns
    values: dict[str, np.ndarray]  # (k, C) float64


class FeatureStream:
    """One feature set computed once per tick for the members that share it.

    Per symbol a rolling bar buffer of the largest ``required_bars`` among the members; each
    :meth:`update` computes the features once (``Predictor.features``, the training code) on
    every symbol's tail, as long as the longest member tail, plus the new bars. Call order per
    tick: ``update(bars)`` with all the tick's bars, then each member's ``step_bars`` with its
    symbols' bars, which takes its rows from :attr:`current`. ``update`` raising (a bar out of
    order) leaves ``current`` None: the members then compute their own and raise the same.
    """

    def __init__(self, members: Sequence[StreamingMember]) -> None:
        if not members:
            raise ValueError("a FeatureStream needs at least one member")
        first = members[0]
        key = _feature_key(first)
        odd = [f"{m.predictor.run_dir_}: {_feature_key(m)}" for m in members[1:] if _feature_key(m) != key]
        if odd:
            raise ValueError(f"members share a FeatureStream only with one feature set, timeframe and "
                             f"bar columns; {first.predictor.run_dir_} has {key}, but " + "; ".join(odd))
        self.predictor = first.predictor
        self.timeframe = first.timeframe
        self.columns = first.columns
        self.members = list(members)
        self.tail = max(m.tail for m in members)
        self.keep = max(m.required_bars for m in members)
        self.current: SharedFeatures | None = None
        self._parsed: tuple[pl.DataFrame, _Parsed] | None = None  # the last update's bars, parsed
        self.feature_passes = 0  # features computed: one per update with bars
        self._symbols: dict[str, _Symbol] = {}
        for m in members:
            m.shared = self

    def update(self, bars: pl.DataFrame) -> SharedFeatures | None:
        """Take the tick's new bars (sorted by (symbol, ts)) and compute their features once."""
        self.current = None
        self._parsed = None
        parsed = _parse_bars(bars, self.columns)
        checked = _check_bars(bars, self.columns, self._symbols, parsed=parsed)
        self._parsed = (bars, parsed)
        if not checked:
            return None
        before = {}
        for name, _, _ in checked:
            s = self._symbols.get(name)
            before[name] = (0, -1) if s is None or s.n == 0 else (s.seen, int(s.ts[s.n - 1]))
        frame, news = _take(checked, self._state, self.tail, self.keep, self.columns)
        try:
            fm = self.predictor.features(frame, self.timeframe, serving=True)
        except Exception:  # bars taken but not counted: start over (members compute their own)
            self.reset()
            raise
        self.feature_passes += 1
        for name, _, k in news:
            self._symbols[name].seen += k
        self.current = SharedFeatures(
            fm=fm, bad=nan_rows(fm.values), gaps=fm.keys.get_column("gap_before").to_numpy(),
            rows={name: (end, *before[name]) for name, end, _ in news},
            ts={name: ts for name, ts, _ in checked}, values={name: v for name, _, v in checked})
        return self.current

    def parsed_for(self, bars: pl.DataFrame) -> _Parsed | None:
        """The last update's parsed bars when a member is handed that same frame (the runtime
        passes it on unfiltered when the member serves all its symbols): parsed once a tick."""
        if self._parsed is not None and self._parsed[0] is bars:
            return self._parsed[1]
        return None

    def reset(self, symbol: str | None = None) -> None:
        """Forget ``symbol``'s bars (all when None); members then compute their own until in sync."""
        self.current = None
        self._parsed = None
        if symbol is None:
            self._symbols.clear()
        else:
            self._symbols.pop(symbol, None)

    def _state(self, symbol: str) -> _Symbol:
        s = self._symbols.get(symbol)
        if s is None:
            cap = 2 * self.keep
            s = self._symbols[symbol] = _Symbol(ts=np.zeros(cap, np.int64),
                                                values=np.zeros((cap, len(self.columns))))
        return s


def share_features(members: Sequence[StreamingMember]) -> list[FeatureStream]:
    """One :class:`FeatureStream` per distinct feature set among ``members`` (attached to them)."""
    groups: dict[tuple[Any, ...], list[StreamingMember]] = {}
    for m in members:
        groups.setdefault(_feature_key(m), []).append(m)
    return [FeatureStream(g) for g in groups.values()]


def _feature_key(m: StreamingMember) -> tuple[Any, ...]:
    fs = m.predictor.feature_set_
    return (fs.name, fs.code_hash, repr(sorted(fs.params.items())), m.timeframe.value, m.columns)


_Parsed = list[tuple[str, np.ndarray, np.ndarray]]  # per symbol: (name, (k,) ts ns, (k, C) values)


def _parse_bars(bars: pl.DataFrame, columns: Sequence[str]) -> _Parsed:
    """Per symbol (sorted, each symbol's bars in arrival order): epoch-ns ts and (k, C) float64
    values; raises when a column is missing."""
    missing = [c for c in ("symbol", "ts", *columns) if c not in bars.columns]
    if missing:
        raise IncompatibleBarsError(f"bars lack columns {missing} (have {bars.columns}); "
                                    f"the run was trained on {list(columns)}")
    if bars.is_empty():
        return []
    # numpy, not a Polars group_by: this runs every tick (a few bars)
    names = bars.get_column("symbol").cast(pl.String).to_numpy()
    order = np.argsort(names, kind="stable")
    names = names[order]
    all_ts = bars.get_column("ts").cast(TS_DTYPE).dt.epoch("ns").to_numpy()[order]
    all_values = bars.select(columns).to_numpy().astype(np.float64)[order]
    cuts = np.flatnonzero(names[1:] != names[:-1]) + 1
    return [(str(names[a]), all_ts[a:b], all_values[a:b])
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(names)], strict=True)]


def _check_bars(bars: pl.DataFrame, columns: Sequence[str], held: Mapping[str, _Symbol], *,
                parsed: _Parsed | None = None) -> _Parsed:
    """Per symbol (sorted): its new bars' epoch-ns ts and (k, C) values, checked to come after
    the symbol's last bar in ``held`` and to increase; raises before anything is taken.
    ``parsed``: ``_parse_bars(bars, columns)`` already computed for this very frame."""
    checked: _Parsed = []
    for name, ts, values in (_parse_bars(bars, columns) if parsed is None else parsed):
        s = held.get(name)
        prev = np.concatenate([s.ts[s.n - 1:s.n] if s is not None else [], ts[:-1]])
        late = np.flatnonzero(ts[len(ts) - len(prev):] <= prev)
        if late.size:
            i = int(late[0])
            raise BarOrderError(
                f"{name}: bar {_iso(ts[len(ts) - len(prev) + i])} does not come after the bar "
                f"{_iso(prev[i])}; bars must arrive in increasing ts per symbol "
                f"(reset({name!r}) to start over)")
        checked.append((name, ts, values))
    return checked


def _append(s: _Symbol, ts: np.ndarray, values: np.ndarray, keep: int) -> None:
    """Append bars to a symbol's buffer; when full, trim to the last ``keep`` bars in one copy
    (grown if one tick brings more), so appending is amortised O(1)."""
    k = len(ts)
    if s.n + k > len(s.ts):
        held = min(s.n, keep)
        cap = max(len(s.ts), 2 * (held + k))
        nts, nval = np.zeros(cap, np.int64), np.zeros((cap, values.shape[1]))
        nts[:held], nval[:held] = s.ts[s.n - held:s.n], s.values[s.n - held:s.n]
        s.ts, s.values, s.n = nts, nval, held
    s.ts[s.n:s.n + k], s.values[s.n:s.n + k] = ts, values
    s.n += k


def _take(checked: Sequence[tuple[str, np.ndarray, np.ndarray]], state: Any, tail: int, keep: int,
          columns: Sequence[str]) -> tuple[pl.DataFrame, list[tuple[str, int, int]]]:
    """Append the checked bars to their buffers (``state(name)``); the frame to compute features
    on (each symbol's last ``tail`` held bars + its new bars, symbols sorted) and per symbol
    (name, end row in that frame, new bars)."""
    names: list[str] = []
    counts: list[int] = []
    stamps: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    news: list[tuple[str, int, int]] = []
    end = 0
    for name, ts, values in checked:
        s = state(name)
        held = min(s.n, tail)
        _append(s, ts, values, keep)
        rows = held + len(ts)
        names.append(name)
        counts.append(rows)
        stamps.append(s.ts[s.n - rows:s.n])
        blocks.append(s.values[s.n - rows:s.n])
        end += rows
        news.append((name, end, len(ts)))
    if not names:
        return pl.DataFrame(), news
    vals = np.concatenate(blocks)  # (N, C) float64: one frame built at once, not one per symbol
    frame = pl.DataFrame({
        "symbol": pl.Series(np.repeat(np.asarray(names, dtype=object), counts), dtype=pl.String),
        "ts": pl.Series(np.concatenate(stamps)).cast(TS_DTYPE),
        **{c: vals[:, j] for j, c in enumerate(columns)},
    })
    return frame, news


def _iso(ns: int) -> str:
    return str(pl.Series([int(ns)]).cast(TS_DTYPE).item())
