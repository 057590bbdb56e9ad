"""The cheap-mask dropout of the ViT models (vitdsi.models.dropout) against nn.Dropout's contract."""

from __future__ import annotations

import pytest
import torch

from vitdsi.models.dropout import RANDOM_LEVELS, Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_with_probability_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    n = 1 << 20
    y = dropout(torch.ones(n), p)
    kept = (y != 0).float().mean().item()
    keep = round((1 - p) * RANDOM_LEVELS) / RANDOM_LEVELS
    assert abs(keep - (1 - p)) <= 2**-16
    assert abs(kept - keep) < 5 * (keep * (1 - keep) / n) ** 0.5  # five binomial standard deviations
    assert torch.allclose(y[y != 0], torch.tensor(1 / keep))  # inverted dropout: survivors scaled up
    assert abs(y.mean().item() - 1.0) < 5 * ((1 - keep) / keep / n) ** 0.5


def test_identity_when_not_training_or_p_is_zero():
    x = torch.randn(64)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x


def test_gradient_is_the_mask_and_seeded_masks_repeat():
    x = torch.randn(4096, requires_grad=True)
    torch.manual_seed(7)
    y = dropout(x, 0.25)
    y.sum().backward()
    scale = RANDOM_LEVELS / round(0.75 * RANDOM_LEVELS)
    assert torch.equal(x.grad, (y != 0).float() * scale)
    torch.manual_seed(7)
    assert torch.equal(dropout(x.detach(), 0.25), y.detach())


def test_keeps_the_dtype_and_rejects_a_bad_probability():
    assert dropout(torch.ones(8, dtype=torch.bfloat16), 0.1).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
