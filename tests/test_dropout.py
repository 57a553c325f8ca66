"""The bit-mask dropout the text fine-tune uses on CPUs: torch's dropout in distribution, expectation and gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikemo.training.dropout import BitMaskDropout, use_bit_mask_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_bit_mask_dropout_drops_p_of_the_elements_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    inputs = torch.rand(400, 1000, dtype=torch.float64) + 1
    outputs = BitMaskDropout(p).train()(inputs)
    dropped = (outputs == 0).double().mean().item()
    assert dropped == pytest.approx(p, abs=4 * (p * (1 - p) / inputs.numel()) ** 0.5)
    kept = outputs != 0
    assert torch.allclose(
        outputs[kept] / inputs[kept], torch.tensor(65536 / (65536 - round(p * 65536)), dtype=torch.float64)
    )
    assert outputs.mean().item() == pytest.approx(inputs.mean().item(), rel=0.01)


def test_bit_mask_dropout_masks_are_independent_of_position_and_follow_the_seed() -> None:
    inputs = torch.ones(64, 4096)
    torch.manual_seed(3)
    first = BitMaskDropout(0.5).train()(inputs)
    torch.manual_seed(3)
    again = BitMaskDropout(0.5).train()(inputs)
    assert torch.equal(first, again)
    by_column = (first == 0).float().mean(0)  # every 16-bit piece of a 64-bit word drops at the same rate
    for piece in range(4):
        assert by_column[piece::4].mean().item() == pytest.approx(0.5, abs=0.01)
    assert not torch.equal(first, BitMaskDropout(0.5).train()(inputs))


def test_bit_mask_dropout_is_the_identity_in_eval_and_its_gradient_is_the_scaled_mask() -> None:
    layer = BitMaskDropout(0.25)
    inputs = torch.randn(8, 33, dtype=torch.bfloat16, requires_grad=True)
    assert layer.eval()(inputs) is inputs
    outputs = layer.train()(inputs)
    assert outputs.dtype == torch.bfloat16
    outputs.float().sum().backward()
    expected = ((outputs != 0).float() * (65536 / (65536 - 16384))).to(torch.bfloat16)
    assert torch.equal(inputs.grad, expected)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BitMaskDropout(1.0)


def test_every_torch_dropout_inside_a_model_is_replaced_and_the_weights_stay() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.3), nn.Linear(4, 2)))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert use_bit_mask_dropout(model) == 2
    assert [layer.p for layer in model.modules() if isinstance(layer, BitMaskDropout)] == [0.1, 0.3]
    assert not any(type(layer) is nn.Dropout for layer in model.modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
