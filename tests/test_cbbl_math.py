"""C-BBL grid, two-hot targets and losses (docs/losses.md) on hand-made cases."""

import math

import pytest
import torch

from rtdetrv2_icr.loss.cbbl import cbbl_ce, cbbl_um, entropy
from rtdetrv2_icr.ops.cbbl_grid import cbbl_grid, expected_offset, two_hot


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("num_bins", [2, 5, 17, 32])
def test_grid_symmetric_increasing_with_exact_ends(beta, num_bins):
    g = cbbl_grid(alpha=4.0, num_bins=num_bins, beta=beta, dtype=torch.float64)
    assert g.shape == (num_bins,)
    assert torch.all(g[1:] > g[:-1])
    assert torch.equal(g, -g.flip(0))
    assert g[0] == -4.0 and g[-1] == 4.0


def test_grid_refuses_underflowing_bins_and_tiny_beta_is_uniform():
    # regression: alpha·beta large enough for the inner values to underflow gave coinciding
    # bins (two-hot targets of all zeros or NaN); beyond ~709 math.expm1 raised OverflowError
    for alpha, bins, beta in ((15.0, 6, 8.0), (4.0, 17, 30.0), (4.0, 17, 200.0)):
        with pytest.raises(ValueError, match="underflow"):
            cbbl_grid(alpha, bins, beta)
    assert torch.all(cbbl_grid(4.0, 17, 25.0).diff() > 0)  # still resolved
    # a vanishing beta is the uniform grid, not a grid of zeros
    uniform = cbbl_grid(4.0, 17, 0.0)
    assert torch.equal(cbbl_grid(4.0, 17, 5e-324), uniform)
    assert torch.allclose(cbbl_grid(4.0, 17, 1e-6), uniform, atol=1e-5)


def test_grid_values_match_formula():
    alpha, beta, n = 4.0, 1.0, 16
    g = cbbl_grid(alpha, n + 1, beta, dtype=torch.float64)
    for i in (0, 3, 8, 11, 16):
        u = -alpha + 2 * alpha * i / n
        expect = (
            math.copysign(1, u)
            * alpha
            * (math.exp(beta * abs(u)) - 1)
            / (math.exp(alpha * beta) - 1)
        )
        assert g[i].item() == pytest.approx(expect if u != 0 else 0.0, abs=1e-12)
    # beta -> 0 tends to the uniform grid
    uniform = cbbl_grid(alpha, n + 1, 0.0, dtype=torch.float64)
    assert torch.allclose(cbbl_grid(alpha, n + 1, 1e-6, dtype=torch.float64), uniform, atol=1e-5)
    assert uniform[3].item() == pytest.approx(-alpha + 2 * alpha * 3 / n)


@pytest.mark.parametrize("beta", [0.0, 1.0, 1.7])
def test_two_hot_recovers_delta_across_range(beta):
    g = cbbl_grid(4.0, 17, beta, dtype=torch.float64)
    delta = torch.cat(
        [
            torch.linspace(-4.0, 4.0, 1001, dtype=torch.float64),
            g,  # grid points too
            torch.tensor([-4.0, 4.0], dtype=torch.float64),
        ]
    )
    t = two_hot(delta, g)
    assert torch.allclose(t.sum(-1), torch.ones_like(delta))
    assert (t >= 0).all()
    assert ((t > 0).sum(-1) <= 2).all()
    assert torch.allclose((t * g).sum(-1), delta, atol=1e-12)


def test_two_hot_clamps_outside_range_and_hand_case():
    g = cbbl_grid(2.0, 5, 0.0, dtype=torch.float64)  # [-2, -1, 0, 1, 2]
    t = two_hot(torch.tensor([0.25, 9.0, -9.0], dtype=torch.float64), g)
    assert torch.allclose(t[0], torch.tensor([0, 0, 0.75, 0.25, 0], dtype=torch.float64))
    assert torch.allclose(t[1], torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64))
    assert torch.allclose(t[2], torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))


def test_ce_gradient_is_p_minus_target():
    g = cbbl_grid(4.0, 17, 1.0)
    logits = torch.randn(6, 4, 17, requires_grad=True)
    target = two_hot(torch.empty(6, 4).uniform_(-4, 4), g)
    cbbl_ce(logits, target).sum().backward()
    assert torch.allclose(logits.grad, logits.softmax(-1).detach() - target, atol=1e-6)


def test_um_zero_when_distributions_match_and_positive_otherwise():
    g = cbbl_grid(4.0, 17, 1.0)
    target = two_hot(torch.tensor([0.3, -1.2, 3.9]), g)
    logits = target.clamp_min(1e-30).log()  # softmax(log p*) == p*
    assert torch.allclose(cbbl_um(logits, target), torch.zeros(3), atol=1e-5)
    assert (cbbl_um(torch.zeros(3, 17), target) > 0.5).all()  # uniform p has far more entropy
    assert entropy(torch.full((4,), 0.25)).item() == pytest.approx(math.log(4))


def test_expectation_of_target_logits_and_finite_gradients():
    g = cbbl_grid(4.0, 17, 1.0)
    delta = torch.tensor([-3.5, 0.0, 2.2])
    target = two_hot(delta, g)
    assert torch.allclose(expected_offset(target.clamp_min(1e-30).log(), g), delta, atol=1e-5)
    big = torch.tensor([[1e4] + [-1e4] * 16], requires_grad=True)
    loss = cbbl_ce(big, two_hot(torch.tensor([4.0]), g)) + cbbl_um(
        big, two_hot(torch.tensor([4.0]), g)
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(big.grad).all()
