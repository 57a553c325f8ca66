"""The CUDA path (bf16 autocast, compiled neurons on the GPU); skipped on machines without a GPU."""

from __future__ import annotations

import pytest
import torch
from test_model import DIMS, NUM_CLASSES, make_batch, tiny_config

from spikemo.config import LossWeights
from spikemo.losses import SpikEmoLoss
from spikemo.model.neuron import MultiStepLIF
from spikemo.model.spikemo import SpikEmo
from spikemo.training.precision import autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_compiled_lif_on_cuda_equals_the_eager_cpu_loop():
    current = torch.randn(8, 64, 16) * 2
    upstream = torch.randn(8, 64, 16)
    results = {}
    for device, compiled in (("cpu", False), ("cuda", True)):
        x = current.to(device).requires_grad_()
        spikes = MultiStepLIF(timesteps=8, tau=2.0, threshold=1.0, compiled=compiled)(x)
        (spikes * upstream.to(device)).sum().backward()
        results[device] = (spikes.cpu(), x.grad.cpu())
    assert torch.equal(results["cuda"][0], results["cpu"][0])
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("compile_neurons", [False, True])
def test_tiny_model_trains_on_cuda_with_bf16_autocast(compile_neurons):
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = SpikEmo(tiny_config(dropout=0.0, compile_neurons=compile_neurons), DIMS, NUM_CLASSES).to(device)
    batch = make_batch([5, 3, 4], seed=4).to(device)
    criterion = SpikEmoLoss(LossWeights(ce=1.0, dice=0.5, soft_hgr=0.1), NUM_CLASSES).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        with autocast("auto", device):
            output = model(batch)
        assert output.logits.dtype == torch.bfloat16
        loss = criterion(output, batch).total
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0]
