"""Peak memory and time of the full-ranking evaluation (sea/metrics.py) at a million items:
random user and item vectors (dim 64), every item a candidate, each user's training items
masked, ``eval.memory_mib`` bounding the scores held at once (docs/scale.md).

    python bench/eval_memory.py                                  # 1M users x 1M items, 5,000 of them ranked
    python bench/eval_memory.py --ranked 20000 --memory-mib 256

Ranking every one of a million users would take hours on a small CPU, and its memory does
not grow with the users ranked (only the top-k lists do, k per user): the script ranks
``--ranked`` users (drawn from the million) against all the items, prints the peak process
memory during the ranking (Linux's VmHWM, reset before it) above what the vectors and lists
take (VmRSS), the seconds, and the seconds projected
to all users (linear in the users: one chunk after another).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import commit, kernels

from sea.metrics import EvalConfig, evaluate_ranking, to_csr


def status_gib(field: str) -> float:
    """A memory line of /proc/self/status (Linux, in kB): VmRSS now, VmHWM its peak."""
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise SystemExit(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0), so that the peak measured is
    the ranking's, not that of building the lists before it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--ranked", type=int, default=5000, help="users ranked (with one held-out item each)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--train-per-user", type=int, default=10, help="training items masked per user")
    p.add_argument("--memory-mib", type=int, default=512, help="eval.memory_mib")
    p.add_argument("--batch-size", type=int, default=4096, help="eval.batch_size")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    user_vec = torch.randn(args.users, args.dim, generator=g)
    item_vec = torch.randn(args.items, args.dim, generator=g)
    users = np.repeat(np.arange(args.users), args.train_per_user)
    exclude = to_csr(users, rng.integers(0, args.items, len(users)), args.users)
    ranked = np.sort(rng.choice(args.users, args.ranked, replace=False))
    truth = to_csr(ranked, rng.integers(0, args.items, len(ranked)), args.users)
    cfg = EvalConfig(batch_size=args.batch_size, memory_mib=args.memory_mib)
    chunk = cfg.chunk(args.items)
    reset_peak()
    base = status_gib("VmRSS")

    t0 = time.perf_counter()
    metrics = evaluate_ranking(lambda u: user_vec[u] @ item_vec.T, exclude, truth, args.items, [10, 20], chunk)
    seconds = time.perf_counter() - t0
    peak = status_gib("VmHWM")
    print(f"commit={commit()}, {kernels()}, cpu ({torch.get_num_threads()} threads)")
    print(
        f"  {args.users:,} users x {args.items:,} items, dim {args.dim}; {args.ranked:,} users ranked, "
        f"memory_mib {args.memory_mib} -> {chunk:,} users a chunk ({chunk * args.items * 4 / 2**20:,.0f} MiB of scores)"
    )
    print(f"  RSS before ranking {base:.2f} GiB (vectors and lists), peak {peak:.2f} GiB: +{peak - base:.2f} GiB")
    print(
        f"  {seconds:.1f} s for {args.ranked:,} users ({seconds / args.ranked * 1e3:.2f} ms/user) "
        f"-> {seconds / args.ranked * args.users / 3600:.1f} h projected for all {args.users:,}"
    )
    print(f"  recall@20 {metrics['recall@20']:.5f} (random vectors: about 20 / {args.items:,})")


if __name__ == "__main__":
    main()
