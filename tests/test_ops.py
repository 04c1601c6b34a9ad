"""sea/ops.py: each operation equals torch's own (to float tolerance, values and gradients)
and gives the same bits at 1, 2 and 3 torch threads, where torch's own does not (shown
for the reductions, so the comparison can fail). Runs with the portable kernels
(tests/conftest.py)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from sea.ops import GRAIN, BatchNorm1d, Pointwise, full_mean, full_sum, matvec, pointwise
from sea.runtime import set_threads

THREADS = (1, 2, 3)


def bits(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture
def threads():
    """Run a function at each thread count of THREADS; restore torch's setting after."""
    old = torch.get_num_threads()

    def at_each(fn):
        out = []
        for n in THREADS:
            set_threads(n)
            out.append(fn())
        return out

    yield at_each
    set_threads(old)


def test_full_sum_and_mean_equal_torchs_and_ignore_the_thread_count(threads):
    g = torch.Generator().manual_seed(0)
    for shape in [(), (7,), (GRAIN,), (GRAIN + 1,), (3000, 64), (70, 50, 40)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        assert torch.allclose(full_sum(x), x.sum(), rtol=1e-12, atol=1e-9)
        assert torch.allclose(full_mean(x), x.mean(), rtol=1e-12, atol=1e-12)
    x = torch.randn(400_000, generator=g)
    assert len(set(threads(lambda: bits(full_sum(x))))) == 1
    assert len(set(threads(lambda: bits(full_mean(x))))) == 1
    # torch's own full reduction splits the work per thread: the comparison can fail
    assert len(set(threads(lambda: bits(x.sum())))) > 1


def test_full_sum_gradient_is_ones():
    x = torch.randn(GRAIN * 2 + 5, requires_grad=True)
    full_sum(x * 3.0).backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def test_matvec_equals_the_product_and_ignores_the_thread_count(threads):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 257, generator=g, dtype=torch.float64)
    v = torch.randn(257, generator=g, dtype=torch.float64)
    assert torch.allclose(matvec(a, v), a @ v, rtol=1e-12, atol=1e-12)
    batched = torch.randn(4, 30, 257, generator=g, dtype=torch.float64)
    assert torch.allclose(matvec(batched, v), batched @ v, rtol=1e-12, atol=1e-12)
    a32, v32 = a.float().requires_grad_(), v.float().requires_grad_()

    def value_and_grads():
        out = matvec(a32, v32)
        ga, gv = torch.autograd.grad(out.pow(2).sum(), (a32, v32))
        return bits(out) + bits(ga) + bits(gv)

    assert len(set(threads(value_and_grads))) == 1


def test_batch_norm_matches_torchs_in_training_and_evaluation():
    g = torch.Generator().manual_seed(2)
    ours, theirs = BatchNorm1d(16, momentum=0.3), nn.BatchNorm1d(16, momentum=0.3)
    for bn in (ours, theirs):
        bn.double()
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 2.0, 16))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, 16))
    for step in range(3):  # training: output, gradients, running statistics
        x = (torch.randn(50, 16, generator=g, dtype=torch.float64) * 3 + step).requires_grad_()
        outs = [bn(x) for bn in (ours, theirs)]
        assert torch.allclose(outs[0], outs[1], rtol=1e-10, atol=1e-10)
        grads = [
            torch.autograd.grad((o * torch.arange(16.0, dtype=torch.float64)).pow(2).sum(), (x, bn.weight, bn.bias))
            for o, bn in zip(outs, (ours, theirs))
        ]
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
    assert torch.allclose(ours.running_mean, theirs.running_mean, rtol=1e-12)
    assert torch.allclose(ours.running_var, theirs.running_var, rtol=1e-12)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    x = torch.randn(20, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(ours(x), theirs(x), rtol=1e-12)


def test_batch_norm_ignores_the_thread_count_where_torchs_does_not(threads):
    x = torch.randn(1500, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)

    def value_and_grad(bn):
        def run():
            out = bn(x)
            (gx,) = torch.autograd.grad(out.pow(3).sum(), x)
            return bits(out) + bits(gx)

        return run

    assert len(set(threads(value_and_grad(BatchNorm1d(64))))) == 1
    assert len(set(threads(value_and_grad(nn.BatchNorm1d(64))))) > 1


@pytest.mark.parametrize("fn", [torch.sigmoid, torch.tanh])
def test_pointwise_equals_torchs_one_thread_result_at_any_thread_count(threads, fn):
    """Each piece of GRAIN elements is computed by one thread, so the result is the bits of
    torch's own at one thread, at every thread count (a size that is no multiple of the
    vector width, so that the scalar tail matters)."""
    x = torch.randn(5 * GRAIN + 13, generator=torch.Generator().manual_seed(4)) * 4
    set_threads(1)
    single = bits(fn(x))
    assert threads(lambda: bits(pointwise(fn, x))) == [single] * len(THREADS)
    assert bits(Pointwise(fn)(x.view(-1, 1))) == single
    torch.testing.assert_close(pointwise(fn, x), fn(x))
