"""SEA's CLUB estimator fit: autograd against the closed-form gradients of
``CLUBEstimator.gradients`` (what ``fit`` uses), in one run, taking turns.

    python bench/estimator_speed.py                 # CPU: the sample's and Baby's batch sizes
    python bench/estimator_speed.py --device cuda

Both fit the same batched estimator (two modalities, head_dim 32, hidden 16: the params'
defaults) on the same pairs with fused Adam, ``--steps`` steps per fit (club.steps, 50);
the pairs are a batch's distinct positive items (about 590 on the sample, 1,900 at Baby's
size with batch 2048). Prints milliseconds per estimator step (median of ``--repeats``
fits after one warm-up each), the autograd/closed-form ratio, both fits' last
log-likelihoods, the device and the commit. The two fits compute the same gradients (in
float64 their weights agree to 1e-15 after 1,000 steps); in float32 rounding makes their
Adam trajectories drift apart slowly, so the log-likelihoods agree closely, not exactly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import commit as bench_commit
from common import kernels, sync

from sea.losses import CLUBEstimator
from sea.models.base import adam


def autograd_fit(est: CLUBEstimator, x: torch.Tensor, y: torch.Tensor, optimizer, steps: int) -> torch.Tensor:
    """The fit as it was: autograd on ``log_likelihood``; the last log-likelihoods."""
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        ll = est.log_likelihood(x, y)
        (-ll.sum()).backward()
        optimizer.step()
    return ll.detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, nargs="+", default=[590, 1900], help="pairs per fit")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    commit = f"{bench_commit()}, {kernels()}"
    name = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {args.device} ({name}), torch {torch.__version__}, commit {commit or '?'}")
    for n in args.rows:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(2, n, 32, generator=g).to(args.device)
        y = 0.5 * x + torch.randn(2, n, 32, generator=g).to(args.device)
        torch.manual_seed(0)
        ests = {"autograd": CLUBEstimator(32, 32, 16, count=2).to(args.device)}
        ests["closed form"] = CLUBEstimator(32, 32, 16, count=2).to(args.device)
        ests["closed form"].load_state_dict(ests["autograd"].state_dict())
        opts = {k: adam(e.parameters(), 1e-3) for k, e in ests.items()}
        fits = {
            # called within this iteration only: the loop variables are the current ones
            "autograd": lambda: autograd_fit(ests["autograd"], x, y, opts["autograd"], args.steps),  # noqa: B023
            "closed form": lambda: ests["closed form"].fit(x, y, opts["closed form"], args.steps),  # noqa: B023
        }
        times: dict[str, list[float]] = {k: [] for k in fits}
        last = {k: fit() for k, fit in fits.items()}  # warm-up
        for _ in range(args.repeats):
            for k, fit in fits.items():  # taking turns: both meet the same machine state
                sync(args.device)
                t = time.perf_counter()
                last[k] = fit()
                sync(args.device)
                times[k].append((time.perf_counter() - t) / args.steps * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        lls = "; ".join(f"{k} {', '.join(f'{v:.3f}' for v in ll.tolist())}" for k, ll in last.items())
        print(
            f"{n} pairs x 2 modalities, {args.steps} steps per fit: autograd {ms['autograd']:.3f} ms/step, "
            f"closed form {ms['closed form']:.3f} ms/step, ratio {ms['autograd'] / ms['closed form']:.2f}x "
            f"(last log-likelihoods after {(args.repeats + 1) * args.steps} steps: {lls})"
        )


if __name__ == "__main__":
    main()
