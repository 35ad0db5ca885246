"""A part, said so: one graph-attention layer's forward + backward on one day of stocks, moola's
dense masked ``GATLayer`` (plain PyTorch) against PyTorch Geometric's ``GATConv`` on an edge
list, for the dense graph and for a k-nearest-neighbour graph; min and median of ``--repeat``.

    pip install torch_geometric      # optional: the benchmark skips PyG when it is absent
    python benchmarks/bench_gat_pyg.py --stocks 489 4484 --k 10

This decides how moola builds graph attention (the closing note of the ranking issue and
BENCHMARKS.md quote it); it is not a test and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from moola.models.graph import GATLayer


def timed(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, float]:
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn().backward()
        out.append(time.perf_counter() - t)
    return min(out), statistics.median(out)


def knn_adj(x: torch.Tensor, k: int) -> torch.Tensor:
    """(S, S) bool: each stock's k most correlated others (from random features: a shape only)."""
    c = torch.corrcoef(x)
    c.fill_diagonal_(-2.0)
    idx = c.topk(k, dim=1).indices
    adj = torch.zeros_like(c, dtype=torch.bool)
    adj.scatter_(1, idx, True)
    return adj | torch.eye(x.shape[0], dtype=torch.bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stocks", type=int, nargs="+", default=[489, 4484])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    try:
        from torch_geometric.nn import GATConv
    except ImportError:
        GATConv = None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; one layer, fwd+bwd, "
          f"hidden {args.hidden}, heads {args.heads}, k {args.k}")
    print("| stocks | graph | edges | moola dense masked (min / median ms) | PyG GATConv (min / median ms) |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    for S in args.stocks:
        h = torch.randn(S, args.hidden, requires_grad=True)
        mask = torch.ones(1, S, dtype=torch.bool)
        ours = GATLayer(args.hidden, args.hidden // args.heads, args.heads, concat=True)
        graphs = {"dense": torch.ones(S, S, dtype=torch.bool), f"knn k={args.k}": knn_adj(h.detach(), args.k)}
        for gname, adj in graphs.items():
            a = adj[None]

            def run_ours(a: torch.Tensor = a, layer: GATLayer = ours, h: torch.Tensor = h,
                         mask: torch.Tensor = mask) -> torch.Tensor:
                return layer(h[None], mask, adj=a).square().mean()

            o = timed(run_ours, args.repeat)
            p_txt = "not installed"
            if GATConv is not None:
                conv = GATConv(args.hidden, args.hidden // args.heads, heads=args.heads, concat=True,
                               add_self_loops=False)
                ei = adj.nonzero().T.contiguous()  # (2, E): source -> target pairs

                def run_pyg(ei: torch.Tensor = ei, conv: torch.nn.Module = conv,
                            h: torch.Tensor = h) -> torch.Tensor:
                    return conv(h, ei).square().mean()

                p = timed(run_pyg, args.repeat)
                p_txt = f"{p[0] * 1e3:.1f} / {p[1] * 1e3:.1f}"
            print(f"| {S} | {gname} | {int(adj.sum()):,} | {o[0] * 1e3:.1f} / {o[1] * 1e3:.1f} | {p_txt} |")


if __name__ == "__main__":
    main()
