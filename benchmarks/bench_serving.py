"""Single-window serving latency on one thread: what ``Predictor.predict_windows`` costs for one
window after features, per engine, against the Predictor's previous path measured in the same run.

Two runs are trained for one epoch through the public API (``run_train``): ``simple_lstm`` on
105-bar ohlc4 windows and ``direction_lstm`` on 60-bar crypto39 windows, both of the bundled
BTC/USD minutes (minutes, so the runtime's ``StreamingMember`` can serve them). Each is loaded
with ``Predictor.from_dir``; the windows are the run's store's last windows, cut and normalised
once (features are not timed).
Per call, one window (a different one each call):

* reference: ``Predictor.predict_windows`` with ``engine="eager"``, the path before issue 16 (the
  eager model on the window padded to ``MIN_BATCH`` rows);
* Predictor default: ``Predictor.predict_windows`` as it now serves one window (its engine);
* eager, ``inference_mode``, batch 1 (no padding), head probabilities included;
* TorchScript: the serving graph traced and frozen; ONNX Runtime (CPU, 1 intra-op thread): both
  with the model's attention pooling folded (``fold_attention``), as the Predictor's engines
  export it, and ONNX Runtime also without (the export before) for a model that has one;
* bf16: eager under CPU bf16 autocast, batch 1;
* carried state, per new bar: the runtime ring (``window`` staggered states, equal to the window
  by construction; for the attention-pooled simple_lstm each slot also keeps its top-layer
  outputs for the head) and one (h, c) carried over the whole history (simple_lstm keeps its
  last ``window`` top-layer outputs for its head): cheap, but not the window's function; its
  difference is printed.

"max |diff|" is the largest |probability - reference| over every timed window; "decisions" is
the share of windows whose argmax class equals the reference's. ``repeats`` rounds interleave
every path; each times ``calls`` windows; p50/p99 per round, min and median over rounds.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_serving.py [--calls 1000] [--repeats 3]
       [--presets simple_lstm direction_lstm | all (also jade, jade_compact, direction_transformer)]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from moola.datasets import WindowSet
from moola.inference import MIN_BATCH, Predictor, head_values
from moola.inference._serving import ServingGraph, _ort_runner, _torchscript_runner
from moola.models import AttentionPooling, fold_attention
from moola.pipelines.train import RunConfig, run_train
from moola.runtime import StreamingMember, ring_refusal
from moola.training.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "simple_lstm": {"bundled": "btcusd_1m", "timeframe": "1m", "feature_set": "ohlc4", "window": 105,
                    "stride": 20, "task": "direction", "horizon": 5},
    "direction_lstm": {"bundled": "btcusd_1m", "timeframe": "1m", "feature_set": "crypto39", "window": 60,
                       "stride": 20, "task": "direction", "horizon": 5},
}
# the other presets of BENCHMARKS.md's old single-window table (--presets all)
RUNS["jade"] = RUNS["jade_compact"] = RUNS["simple_lstm"]
RUNS["direction_transformer"] = RUNS["direction_lstm"]
DEFAULT = ("simple_lstm", "direction_lstm")
Call = Callable[[int], np.ndarray]  # window number -> (C,) probabilities


def trained(tmp: Path, preset: str) -> tuple[Path, Path]:
    """A one-epoch run of ``preset``; (run dir, its store)."""
    cfg = RunConfig.from_dict({
        "name": f"bench_serving_{preset}", "out_dir": str(tmp), "preset": preset, "data": RUNS[preset],
        "train": {"epochs": 1, "batch_size": 128, "device": "cpu", "num_threads": 1},
        "baselines": ["majority"], "economics": None,
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = run_train(cfg, console=Console(quiet=True), show_progress=False).run_dir
    return run_dir, Path(read_manifest(run_dir).store or "")


def last_windows(p: Predictor, store: Path, n: int) -> tuple[WindowSet, np.ndarray, np.ndarray]:
    """The window set, the indices of its last ``n`` windows of its first symbol (consecutive
    bars, so a carried state can walk them), and those windows normalised (n, T, F)."""
    bars, tf = p.load_bars(store)
    first = sorted(bars["symbol"].unique().to_list())[0]
    ws = WindowSet.from_matrix(p.features(bars.filter(bars["symbol"] == first), tf), p.window_)
    idx = np.arange(len(ws) - n, len(ws))
    x = ws.batch(idx)
    if p.normalizer_ is not None:
        x = p.normalizer_.transform(x)
    return ws, idx, np.ascontiguousarray(x, dtype=np.float32)


def carried(p: Predictor, x: np.ndarray, ring: bool) -> Call:
    """Per new bar: the runtime's ring step (``ring``: ``StreamingMember``'s own, one batched
    step per layer over ``window`` staggered states, then the head on the completed slot: its
    last state, or its kept outputs for an attention-pooled head) or one carried (h, c) state,
    then the head. Bars are the windows' last rows, after a warm-up over the first window's bars."""
    model, cfg, W = p.model_, p.model_config_, p.window_
    rnn = model.encoder.rnn  # type: ignore[union-attr]
    bars = torch.from_numpy(np.concatenate([x[0, :-1], x[:, -1]]))  # (W - 1 + n, F)
    if ring:
        member = StreamingMember(p, recurrent=True)
        sym = p.manifest_.symbols[0]
        s = member._state(sym)

        def ring_step(t: int) -> np.ndarray:
            out = member._ring_step(sym, s, t, bars[t:t + 1], True)
            assert out is not None
            return out
        return _walk(ring_step, W)
    hc: list[tuple[torch.Tensor, torch.Tensor] | None] = [None]
    tops = torch.zeros(1, W, rnn.hidden_size)  # the last W top-layer outputs, oldest first

    def state_step(t: int) -> np.ndarray:
        out, hc[0] = rnn(bars[t:t + 1][None], hc[0])  # (1, 1, H)
        tops[:, :-1] = tops[:, 1:].clone()
        tops[:, -1] = out[:, -1]
        return head_values(dict(model.heads.items())[next(iter(model.heads))](tops), cfg)[0]
    return _walk(state_step, W)


def _walk(step: Callable[[int], np.ndarray], W: int) -> Call:
    """Warm the state over the first window's bars; then call k is bar W - 1 + k."""
    for t in range(W - 1):
        step(t)
    return lambda k: step(W - 1 + k)


def paths(p_ref: Predictor, p_new: Predictor, ws: WindowSet, idx: np.ndarray, x: np.ndarray,
          preset: str) -> dict[str, Callable[[], Call]]:
    """Per path, a maker of its call (a fresh one starts a carried state's walk again)."""
    model, cfg = p_new.model_.eval(), p_new.model_config_
    n_sym = len(p_new.manifest_.symbols)
    folded = fold_attention(model)  # what the Predictor's engines export
    graph = ServingGraph(folded, cfg, center=None, scale=None, temperature=None).eval()
    ts = _torchscript_runner(graph, cfg, p_new.window_, n_sym)
    ort = _ort_runner(graph, cfg, p_new.window_, n_sym)
    xt = torch.from_numpy(x)

    def eager(k: int) -> np.ndarray:
        with torch.inference_mode():
            return head_values(model({"x": xt[k:k + 1]}), cfg)[0]

    def bf16(k: int) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return head_values(model({"x": xt[k:k + 1]}), cfg)[0]

    fixed: dict[str, Call] = {
        f"reference: Predictor before (eager, padded to {MIN_BATCH})":
            lambda k: p_ref.predict_windows(ws, idx[k:k + 1])[0],
        f"Predictor default now ({p_new.serving_engine().name})":
            lambda k: p_new.predict_windows(ws, idx[k:k + 1])[0],
        "eager, inference_mode, batch 1": eager,
        "TorchScript (traced, frozen), batch 1": lambda k: ts(x[k:k + 1], None)[0],
        "ONNX Runtime CPU, batch 1": lambda k: ort(x[k:k + 1], None)[0],
        "bf16 autocast, batch 1": bf16,
    }
    if any(isinstance(m, AttentionPooling) for m in model.modules()):
        plain = ServingGraph(model, cfg, center=None, scale=None, temperature=None).eval()
        ort_plain = _ort_runner(plain, cfg, p_new.window_, n_sym)
        fixed["ONNX Runtime CPU, batch 1, attention not folded"] = lambda k: ort_plain(x[k:k + 1], None)[0]
    out: dict[str, Callable[[], Call]] = {name: (lambda f=f: f) for name, f in fixed.items()}
    if ring_refusal(cfg) is None:
        out[f"carried state: runtime ring ({p_new.window_} staggered states), per bar"] = (
            lambda: carried(p_new, x, ring=True))
    rnn = getattr(model.encoder, "rnn", None)
    if isinstance(rnn, torch.nn.LSTM) and not rnn.bidirectional:
        out["carried state: one (h, c) over all history, per bar"] = lambda: carried(p_new, x, ring=False)
    return out


def batch_rows(p: Predictor, ws: WindowSet, idx: np.ndarray, x: np.ndarray, batch: int = 256,
               repeats: int = 3) -> dict[str, list[float]]:
    """Rows/s of one large batch: the Predictor's path (eager, as evaluation computes it)
    against ONNX Runtime on the same normalised windows, interleaved."""
    graph = ServingGraph(fold_attention(p.model_), p.model_config_, center=None, scale=None,
                         temperature=None).eval()
    ort = _ort_runner(graph, p.model_config_, p.window_, len(p.manifest_.symbols))
    sel, xb = idx[:batch], x[:batch]
    fns: dict[str, Callable[[], object]] = {
        f"Predictor.predict_windows, {batch} windows (eager batch)": lambda: p.predict_windows(ws, sel),
        f"ONNX Runtime CPU, batch {batch}": lambda: ort(xb, None)}
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(len(sel) / (time.perf_counter() - t0))
    return {name: v[1:] for name, v in out.items()}


def timed(fn: Call, n: int) -> tuple[list[float], np.ndarray]:
    got, times = [], []
    with torch.no_grad():
        for k in range(n):
            t0 = time.perf_counter()
            v = fn(k)
            times.append(time.perf_counter() - t0)
            got.append(v)
    return times, np.stack(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT), choices=[*RUNS, "all"])
    args = ap.parse_args()
    presets = list(RUNS) if "all" in args.presets else args.presets
    torch.set_num_threads(1)
    rows = []
    batch_rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        for preset in presets:
            run_dir, store = trained(Path(tmp_s), preset)
            p_ref = Predictor.from_dir(run_dir, engine="eager")
            p_new = Predictor.from_dir(run_dir)
            ws, idx, x = last_windows(p_new, store, args.calls)
            cases = paths(p_ref, p_new, ws, idx, x, preset)
            stats: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
            ref = None
            diffs: dict[str, tuple[float, float]] = {}
            for make in cases.values():  # warm-up
                fn = make()
                for k in range(20):
                    fn(k)
            for r in range(args.repeats):  # rounds interleave every path: drift hits all alike
                for name, make in cases.items():
                    t, got = timed(make(), args.calls)
                    ms = np.asarray(t) * 1e3
                    stats[name].append((float(np.percentile(ms, 50)), float(np.percentile(ms, 99))))
                    if ref is None:
                        ref = got
                    if r == 0:
                        diffs[name] = (float(np.abs(got.astype(np.float64) - ref).max()),
                                       float(np.mean(got.argmax(1) == ref.argmax(1))))
            batch_rates[preset] = batch_rows(p_new, ws, idx, x)
            T, F = x.shape[1:]
            for name, s in stats.items():
                p50, p99 = [a for a, _ in s], [b for _, b in s]
                rows.append((preset, f"1x{T}x{F}", name, min(p50), statistics.median(p50), min(p99),
                             statistics.median(p99), *diffs[name]))
    print(f"torch {torch.__version__}, 1 thread, {args.calls} windows per round, {args.repeats} rounds "
          f"interleaved; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print("| preset | input | path | p50 ms (min) | p50 ms (median) | p99 ms (min) | p99 ms (median) | "
          "max \\|diff\\| vs reference | same decision |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, shape, name, a, b, c, d, diff, same in rows:
        print(f"| {preset} | {shape} | {name} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {diff:.2g} | "
              f"{same:.1%} |")
    print()
    print("| preset | large batch | rows/s (min) | rows/s (median) |")
    print("|---|---|---|---|")
    for preset, rates in batch_rates.items():
        for name, v in rates.items():
            print(f"| {preset} | {name} | {min(v):,.0f} | {statistics.median(v):,.0f} |")


if __name__ == "__main__":
    main()
