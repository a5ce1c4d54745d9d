"""The per-sample Dormand–Prince integrator against closed-form solutions: errors that follow the tolerance, fifth
order on a fixed number of steps' worth of tolerance, each sample's own step count, exact batch independence, both
directions, and clear errors."""

import math

import pytest
import torch

from scoresde.integrate import solve_per_sample

F64 = torch.float64
LAM = torch.tensor([0.1, 1.0, 10.0, 50.0, 200.0], dtype=F64)  # decay rates over three decades: very unequal stiffness


def _decay(t, y, rows):
    return -LAM[rows][:, None] * y


@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10])
def test_linear_decay_is_solved_to_the_tolerance_with_a_step_count_per_sample(tol):
    y0 = torch.ones(5, 3, dtype=F64)
    sol = solve_per_sample(_decay, y0, 0.0, 1.0, rtol=tol, atol=tol)
    err = (sol.y - torch.exp(-LAM)[:, None]).abs().max(1).values
    assert bool((err < 10 * tol).all()), err
    # the stiffer the sample, the more steps it takes; the mildest one needs a handful (measured 14-32 evaluations)
    assert bool((sol.nfe[1:] >= sol.nfe[:-1]).all()) and int(sol.nfe[0]) < int(sol.nfe[-1]) / 5
    assert bool((sol.nfe == 1 + 1 + 6 * sol.accepted + 6 * sol.rejected).all())  # f0, initial step, 6 per attempt


def test_error_shrinks_like_the_fifth_power_of_the_step():
    """Tightening the tolerance by 10^5 should cut the evaluations by about 10 (h ∝ tol^(1/5)) on a smooth problem:
    measured ratio of accepted steps between 1e-5 and 1e-10 on y' = cos(t) y."""
    y0 = torch.ones(1, 1, dtype=F64)

    def f(t, y, rows):
        return torch.cos(t)[:, None] * y

    steps = []
    for tol in (1e-5, 1e-10):
        sol = solve_per_sample(f, y0, 0.0, 10.0, rtol=tol, atol=tol)
        assert abs(float(sol.y) - math.exp(math.sin(10.0))) < 50 * tol
        steps.append(int(sol.accepted))
    assert 6 < steps[1] / steps[0] < 16, steps


def test_a_sample_alone_is_bit_for_bit_the_sample_in_a_batch():
    y0 = torch.linspace(0.5, 2.0, 5, dtype=F64)[:, None].expand(5, 2).clone()
    batch = solve_per_sample(_decay, y0, 0.0, 1.0, rtol=1e-6, atol=1e-6)
    for i in range(5):
        alone = solve_per_sample(lambda t, y, rows, i=i: -LAM[i] * y, y0[i : i + 1], 0.0, 1.0, rtol=1e-6, atol=1e-6)
        assert torch.equal(alone.y, batch.y[i : i + 1]) and int(alone.nfe) == int(batch.nfe[i])


def test_integration_backwards_lands_exactly_and_calls_only_running_samples():
    sizes = []

    def f(t, y, rows):
        sizes.append(len(rows))
        return -LAM[rows][:, None] * y

    y1 = torch.ones(5, 1, dtype=F64)
    sol = solve_per_sample(f, y1, 1.0, 0.0, rtol=1e-8, atol=1e-8)  # y(0) = e^{lam} y(1)
    assert torch.allclose(sol.y[:, 0], torch.exp(LAM), rtol=1e-6)
    assert sizes[0] == 5 and min(sizes) < 5  # the mild samples finish first and leave the batch


def test_bad_input_is_refused_in_one_line():
    y0 = torch.ones(2, 1, dtype=F64)
    with pytest.raises(ValueError, match="rtol and atol must be positive"):
        solve_per_sample(_decay, y0, 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match=r"y0 must have shape \(B, n\)"):
        solve_per_sample(_decay, torch.ones(2, dtype=F64), 0.0, 1.0)
    with pytest.raises(RuntimeError, match="took 3 steps without reaching t = 1"):
        solve_per_sample(lambda t, y, r: -LAM[r][:, None] * y, torch.ones(5, 1, dtype=F64), 0.0, 1.0, max_steps=3)
