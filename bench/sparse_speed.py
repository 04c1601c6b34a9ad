"""Two exact shortcuts of the trainer, each timed against the plain formulation in one run
at Amazon Baby's size (19,445 users, 7,050 items, 119,468 training interactions):

- propagation: two hops ``Â·x`` over the user–item graph, forward + backward, with
  ``torch.sparse.mm`` (whose backward transposes the CSR matrix, a sort, every time) and
  with :func:`sea.models.graphs.spmm` (the symmetric Â serves its own backward);
- the L2 penalty of ``B × N`` negatives' vectors, forward + backward, gathered
  (``table[ids].norm()``) and from per-item counts (:func:`sea.losses.rows_norm`).

    python bench/sparse_speed.py [--repeats 10] [--negatives 1000]

Prints the median seconds of each, their plain/fast ratio, the device and the commit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import commit as bench_commit
from common import kernels
from train_speed import PRESETS, synthetic

from sea.losses import rows_norm
from sea.models.base import GraphData
from sea.models.graphs import spmm


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--negatives", type=int, default=1000, help="negatives per positive (batch 2048)")
    args = p.parse_args()

    n_users, n_items, n_train = PRESETS["baby"][:3]
    df, _ = synthetic(n_users, n_items, n_train, {})
    adj = GraphData.build(df, n_items, {}, "cpu").adj
    x = torch.randn(adj.shape[0], 64, requires_grad=True)

    def propagate(product):
        def step():
            h, out = x, x
            for _ in range(2):
                h = product(h)
                out = out + h
            out.sum().backward()

        return step

    table = torch.randn(n_items, 64, requires_grad=True)
    ids = torch.randint(n_items, (2048, args.negatives))

    def penalty(norm):
        return lambda: norm().backward()

    pairs = {
        "propagation, 2 hops fwd+bwd": (
            propagate(lambda h: torch.sparse.mm(adj, h)),
            propagate(lambda h: spmm(adj, h)),
        ),
        f"L2 of 2048 x {args.negatives} negatives fwd+bwd": (
            penalty(lambda: table[ids].norm()),
            penalty(lambda: rows_norm(table, ids)),
        ),
    }
    commit = f"{bench_commit()}, {kernels()}"
    print(f"device=cpu ({torch.get_num_threads()} threads) commit={commit} preset=baby repeats={args.repeats}")
    for name, (plain, fast) in pairs.items():
        t_plain, t_fast = median_seconds(plain, args.repeats), median_seconds(fast, args.repeats)
        print(
            f"  {name}: plain {t_plain * 1e3:.1f} ms, fast {t_fast * 1e3:.1f} ms, "
            f"plain/fast ratio {t_plain / t_fast:.2f}x"
        )


if __name__ == "__main__":
    main()
