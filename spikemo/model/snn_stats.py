"""Spike statistics of a model's spiking layers: firing rates and an energy estimate.

``with SpikeMonitor(model) as monitor: model(batch)`` hooks every LIF neuron and every linear layer inside
a ``Spikformer``; figures accumulate over calls until the context exits (the hooks are then removed).

Energy follows the usual SNN accounting (45 nm CMOS, Horowitz 2014): a synaptic operation (SOP, one
accumulate per spike per fan-out) costs 0.9 pJ, a multiply-accumulate 4.6 pJ. SOPs count each linear
layer's input spikes times its output width over all timesteps (an input constant over time counts T
times); the non-spiking reference is the same layers run once on real-valued inputs (MACs). The
spike-product attention inside each head is not counted.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from spikemo.model.neuron import SpikingNeuron
from spikemo.model.spikformer import Spikformer

PICOJOULES_PER_AC = 0.9
PICOJOULES_PER_MAC = 4.6


class SpikeMonitor:
    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._spikes: dict[str, float] = defaultdict(float)
        self._elements: dict[str, int] = defaultdict(int)
        self.synaptic_ops = 0.0
        self.dense_macs = 0.0

    def __enter__(self) -> SpikeMonitor:
        for name, module in self.model.named_modules():
            if isinstance(module, SpikingNeuron):
                self._handles.append(module.register_forward_hook(self._neuron_hook(name)))
        for spikformer in (m for m in self.model.modules() if isinstance(m, Spikformer)):
            for linear in (m for m in spikformer.modules() if isinstance(m, nn.Linear)):
                self._handles.append(linear.register_forward_hook(self._synapse_hook(spikformer.timesteps)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _neuron_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], spikes: torch.Tensor) -> None:
            self._spikes[name] += float(spikes.detach().sum())
            self._elements[name] += spikes.numel()

        return hook

    def _synapse_hook(self, timesteps: int):
        def hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()
            repeats = timesteps if x.dim() == 2 else 1  # [N, D] inputs stand for T identical timesteps
            tokens = x.shape[-2]
            self.synaptic_ops += float((x != 0).sum()) * repeats * module.out_features
            self.dense_macs += tokens * module.in_features * module.out_features

        return hook

    def firing_rates(self) -> dict[str, float]:
        """Spiking layer (module name) -> fraction of its neuron-timesteps that spiked."""
        return {name: self._spikes[name] / self._elements[name] for name in self._elements if self._elements[name]}

    def energy(self) -> dict[str, float]:
        snn_mj = self.synaptic_ops * PICOJOULES_PER_AC * 1e-9
        ann_mj = self.dense_macs * PICOJOULES_PER_MAC * 1e-9
        return {
            "synaptic_ops": self.synaptic_ops,
            "dense_macs": self.dense_macs,
            "snn_energy_mj": snn_mj,
            "ann_energy_mj": ann_mj,
            "energy_ratio": snn_mj / ann_mj if ann_mj else 0.0,
            "pj_per_ac": PICOJOULES_PER_AC,
            "pj_per_mac": PICOJOULES_PER_MAC,
        }
