"""SpikEmo model: shapes, masks, spiking blocks, gradients, modality subsets, spike statistics."""

from __future__ import annotations

import itertools

import pytest
import torch
from spikingjelly.activation_based import neuron, surrogate

from spikemo.config import LossWeights, ModelConfig, NeuronConfig
from spikemo.losses import SpikEmoLoss
from spikemo.model.batch import IGNORE_INDEX, DialogueBatch
from spikemo.model.ensemble import SpikEmoEnsemble, build_model
from spikemo.model.fusion import CrossAttention
from spikemo.model.neuron import MultiStepLIF, is_fused_lif
from spikemo.model.snn_stats import SpikeMonitor
from spikemo.model.spikemo import SPEAKER_VARIANCE_FLOOR, SpikEmo, _speaker_means, _speaker_peers, speaker_relative
from spikemo.model.spikformer import LinearNormLIF, Spikformer
from spikemo.training.precision import autocast

DIMS = {"text": 6, "audio": 5, "visual": 4}
NUM_CLASSES = 3


def tiny_config(**overrides) -> ModelConfig:
    settings = dict(
        model_dim=8,
        timesteps=4,
        spikformer_depth=1,
        spikformer_heads=2,
        fusion_layers=1,
        fusion_heads=2,
        fusion_hidden=16,
        dialogue_context=["audio", "visual"],
    )
    settings.update(overrides)
    return ModelConfig(**settings)


def firing_config(**overrides) -> ModelConfig:
    """A low threshold and one head make the spike-product attention fire (at tiny sizes it stays silent)."""
    return tiny_config(model_dim=16, timesteps=8, neuron=NeuronConfig(v_threshold=0.3), spikformer_heads=1, **overrides)


def make_batch(lengths: list[int], modalities=tuple(DIMS), seed: int = 0, dtype=torch.float32) -> DialogueBatch:
    generator = torch.Generator().manual_seed(seed)
    max_length = max(lengths)
    utterance_mask = torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]
    features = {
        m: torch.randn(len(lengths), max_length, DIMS[m], generator=generator).to(dtype) * 3 * utterance_mask[..., None]
        for m in modalities
    }
    labels = torch.randint(NUM_CLASSES, (len(lengths), max_length), generator=generator)
    return DialogueBatch(
        features=features,
        modality_mask={m: utterance_mask.clone() for m in modalities},
        utterance_mask=utterance_mask,
        party=torch.randint(2, (len(lengths), max_length), generator=generator),
        labels=labels.masked_fill(~utterance_mask, IGNORE_INDEX),
    )


def stack_dialogues(first: DialogueBatch, second: DialogueBatch) -> DialogueBatch:
    """Batch two single-dialogue batches, padding the shorter one with garbage that masks must hide."""
    length = max(first.max_length, second.max_length)

    def pad(x: torch.Tensor, fill) -> torch.Tensor:
        extra = length - x.shape[1]
        return torch.cat([x, torch.full((x.shape[0], extra, *x.shape[2:]), fill, dtype=x.dtype)], 1)

    both = lambda a, b, fill: torch.cat([pad(a, fill), pad(b, fill)])  # noqa: E731
    return DialogueBatch(
        features={m: both(first.features[m], second.features[m], 7.0) for m in first.features},
        modality_mask={m: both(first.modality_mask[m], second.modality_mask[m], True) for m in first.modality_mask},
        utterance_mask=both(first.utterance_mask, second.utterance_mask, False),
        party=both(first.party, second.party, 1),
        labels=both(first.labels, second.labels, IGNORE_INDEX),
    )


def test_output_shapes_and_fused_features():
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(), DIMS, NUM_CLASSES)
    batch = make_batch([4, 2, 3])
    output = model(batch)
    assert output.logits.shape == (3, 4, NUM_CLASSES)
    assert set(output.modality_features) == set(DIMS)
    assert all(f.shape == (3, 4, 8) for f in output.modality_features.values())
    assert torch.isfinite(output.logits).all()
    assert output.logits[~batch.utterance_mask].abs().max() == 0


@pytest.mark.parametrize("speaker_relative", ["off", "centred", "zscore"])
def test_padding_never_changes_a_real_utterance(speaker_relative):
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(speaker_relative_inputs=speaker_relative), DIMS, NUM_CLASSES).double().eval()
    short = make_batch([3], seed=1, dtype=torch.float64)
    long = make_batch([6], seed=2, dtype=torch.float64)
    alone = model(short).logits[0]
    padded = model(stack_dialogues(short, long)).logits[0, :3]
    torch.testing.assert_close(padded, alone)
    assert model(stack_dialogues(long, short)).logits[1, :3].allclose(alone)


@pytest.mark.parametrize("speaker_relative", ["off", "centred", "zscore"])
def test_absent_modality_features_are_ignored(speaker_relative):
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(speaker_relative_inputs=speaker_relative), DIMS, NUM_CLASSES).double().eval()
    batch = make_batch([4, 3], seed=3, dtype=torch.float64)
    batch.modality_mask["audio"][0, 1] = False
    batch.modality_mask["visual"][1] = False  # a whole dialogue without video
    reference = model(batch).logits
    batch.features["audio"][0, 1] = 100.0
    batch.features["visual"][1] = -50.0
    changed = model(batch).logits
    assert torch.isfinite(changed).all()
    torch.testing.assert_close(changed, reference)


def test_speaker_means_average_each_speakers_present_utterances_of_the_dialogue():
    features = torch.tensor([[[1.0], [10.0], [3.0], [100.0]], [[5.0], [7.0], [0.0], [0.0]]])
    party = torch.tensor([[0, 1, 0, 0], [1, 1, 0, 0]])
    present = torch.tensor([[True, True, True, False], [True, True, False, False]])  # [0, 3] absent; row 1 padded
    means = _speaker_means(features, _speaker_peers(party, present, causal=False))
    expected = torch.tensor([[[2.0], [10.0], [2.0], [0.0]], [[6.0], [6.0], [0.0], [0.0]]])
    torch.testing.assert_close(means, expected)
    so_far = _speaker_means(features, _speaker_peers(party, present, causal=True))
    torch.testing.assert_close(so_far, torch.tensor([[[1.0], [10.0], [2.0], [0.0]], [[5.0], [6.0], [0.0], [0.0]]]))


def test_causal_speaker_zscores_use_each_turns_own_mean_and_end_equal_to_the_bidirectional_ones():
    torch.manual_seed(0)
    features = torch.randn(1, 6, 3, dtype=torch.float64)
    party = torch.tensor([[0, 1, 0, 0, 1, 0]])
    present = torch.ones(1, 6, dtype=torch.bool)
    causal = speaker_relative(features, party, present, "zscore", causal=True, min_utterances=2)
    both_ways = speaker_relative(features, party, present, "zscore")
    torch.testing.assert_close(causal[0, 5], both_ways[0, 5])  # speaker 0's last turn has seen all of its turns
    torch.testing.assert_close(causal[0, 4], both_ways[0, 4])  # so has speaker 1's
    x0, x1 = features[0, 0], features[0, 2]  # speaker 0's first two turns: mean (x0 + x1) / 2, variance (x1 - x0)^2 / 4
    expected = (x1 - (x0 + x1) / 2) / ((x1 - x0).square() / 4 + SPEAKER_VARIANCE_FLOOR).sqrt()
    torch.testing.assert_close(causal[0, 2], expected)
    torch.testing.assert_close(causal[0, 0], features[0, 0])  # one turn so far: the population's statistics


@pytest.mark.parametrize("speaker_relative", ["centred", "zscore"])
def test_speaker_relative_inputs_see_the_other_utterances_of_the_same_speaker_only(speaker_relative):
    torch.manual_seed(0)
    config = tiny_config(
        speaker_relative_inputs=speaker_relative, use_spiking=False, dialogue_context=[], fusion_layers=0
    )
    model = SpikEmo(config, {"audio": DIMS["audio"]}, NUM_CLASSES).double().eval()
    batch = make_batch([4], modalities=("audio",), seed=4, dtype=torch.float64)
    batch.party = torch.tensor([[0, 1, 0, 1]])
    reference = model(batch).logits
    batch.features["audio"][0, 2] += 5.0  # speaker 0's second utterance
    changed = model(batch).logits
    assert not torch.allclose(changed[0, 0], reference[0, 0])  # the same speaker's mean moved
    torch.testing.assert_close(changed[0, [1, 3]], reference[0, [1, 3]])  # the other speaker's did not


def test_zscore_inputs_ignore_a_speakers_own_offset_and_centred_ones_do_not():
    torch.manual_seed(0)
    batch = make_batch([5], modalities=("audio",), seed=5, dtype=torch.float64)
    batch.party = torch.tensor([[0, 1, 0, 0, 1]])
    louder = make_batch([5], modalities=("audio",), seed=5, dtype=torch.float64)
    louder.party = batch.party
    louder.features["audio"][0, [0, 2, 3]] += torch.linspace(1.0, 3.0, DIMS["audio"], dtype=torch.float64)
    logits = {}
    for mode in ("centred", "zscore"):
        config = tiny_config(speaker_relative_inputs=mode, use_spiking=False, dialogue_context=[], fusion_layers=0)
        model = SpikEmo(config, {"audio": DIMS["audio"]}, NUM_CLASSES).double().eval()
        logits[mode] = (model(batch).logits, model(louder).logits)
    torch.testing.assert_close(*logits["zscore"])
    assert not torch.allclose(*logits["centred"])


def test_speaker_relative_inputs_read_older_boolean_configs():
    assert tiny_config(speaker_relative_inputs=True).speaker_relative_inputs == "centred"
    assert tiny_config(speaker_relative_inputs=False).speaker_relative_inputs == "off"


def test_cross_attention_without_any_key_gives_zero_update():
    attention = CrossAttention(dim=8, heads=2)
    utterance_mask = torch.tensor([[True, True, False], [True, True, True]])
    queries, keys = torch.randn(5, 8), torch.randn(5, 8)
    key_mask = torch.tensor([[True, False, False], [False, False, False]])
    out = attention(queries, keys, utterance_mask, key_mask)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    assert out[2:].abs().max() == 0  # the second dialogue's three utterances
    assert out[:2].abs().amin(-1).min() > 0


@pytest.mark.parametrize("threshold", [1.0, 0.5])
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_lif_equals_spikingjelly_lif(threshold, compiled):
    reference = neuron.LIFNode(
        tau=2.0, v_threshold=threshold, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m"
    )
    fused = MultiStepLIF(timesteps=6, tau=2.0, threshold=threshold, compiled=compiled)
    current = torch.randn(6, 40, 5) * 2
    upstream = torch.randn(6, 40, 5)
    for stepwise in (current, current[:1]):  # a [1, ...] current stands for the same current at every step
        x_ref = stepwise.expand(6, 40, 5).clone().requires_grad_()
        x = stepwise.clone().requires_grad_()
        reference.reset()
        expected = reference(x_ref)
        spikes = fused(x)
        assert torch.equal(spikes, expected) and 0 < spikes.mean() < 1
        (expected * upstream).sum().backward()
        (spikes * upstream).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad.sum(0, keepdim=True) if len(stepwise) == 1 else x_ref.grad)
        assert x.grad.abs().sum() > 0


def test_compiled_lif_keeps_a_bf16_current_s_membrane_in_fp32():
    current = (torch.randn(6, 40, 5) * 2).to(torch.bfloat16)
    upstream = torch.randn(6, 40, 5)
    spikes = {}
    grads = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = current.detach().to(dtype).requires_grad_()
        spikes[dtype] = MultiStepLIF(timesteps=6, tau=2.0, threshold=1.0, compiled=True)(x)
        (spikes[dtype].float() * upstream).sum().backward()
        grads[dtype] = x.grad
    assert spikes[torch.bfloat16].dtype == torch.bfloat16 and grads[torch.bfloat16].dtype == torch.bfloat16
    assert torch.equal(spikes[torch.bfloat16].float(), spikes[torch.float32])  # same fp32 membrane, same spikes
    torch.testing.assert_close(grads[torch.bfloat16].float(), grads[torch.float32], rtol=1e-2, atol=1e-2)


def test_constant_input_shortcut_matches_repeated_input():
    torch.manual_seed(0)
    config = tiny_config(spikformer_depth=2)
    layer = LinearNormLIF(8, 8, config)
    x = torch.randn(5, 8) * 3
    torch.testing.assert_close(layer(x), layer(x.expand(config.timesteps, 5, 8).contiguous()))

    spikformer = Spikformer(config)
    features, mask = torch.randn(2, 4, 8) * 3, torch.tensor([[True, True, True, False], [True, False, True, True]])
    shortcut = spikformer(features, mask)
    encoded = spikformer.encode(features[mask]).expand(config.timesteps, 6, 8).contiguous()
    for block in spikformer.blocks:
        encoded = block(encoded, mask)
    torch.testing.assert_close(shortcut[mask], spikformer.norm(encoded).mean(0))
    assert shortcut[~mask].abs().max() == 0


def test_spikformer_ignores_padding_and_absent_utterances():
    torch.manual_seed(0)
    spikformer = Spikformer(firing_config(spikformer_depth=2)).double()
    short, long = torch.randn(1, 3, 16, dtype=torch.float64) * 3, torch.randn(1, 6, 16, dtype=torch.float64) * 3
    alone = spikformer(short, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([torch.cat([short, torch.full((1, 3, 16), 7.0, dtype=torch.float64)], 1), long])
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    torch.testing.assert_close(spikformer(padded, mask)[0, :3], alone[0])

    gap = torch.cat([short[:, :1], torch.full((1, 1, 16), -9.0, dtype=torch.float64), short[:, 1:]], 1)
    with_gap = spikformer(gap, torch.tensor([[True, False, True, True]]))  # utterance 1 lacks this modality
    torch.testing.assert_close(with_gap[0, [0, 2, 3]], alone[0])


def test_spiking_attention_mixes_the_utterances_of_a_dialogue_only():
    torch.manual_seed(0)
    spikformer = Spikformer(firing_config()).double()
    features = torch.randn(2, 4, 16, dtype=torch.float64) * 3
    mask = torch.ones(2, 4, dtype=torch.bool)
    before = spikformer(features, mask)
    features[0, 0] = torch.randn(16, dtype=torch.float64) * 3
    after = spikformer(features, mask)
    assert not torch.allclose(after[0, 2], before[0, 2])
    torch.testing.assert_close(after[1], before[1])


def test_gradient_flows_through_the_surrogate():
    torch.manual_seed(0)
    spikformer = Spikformer(tiny_config())
    x = (torch.randn(2, 3, 8) * 3).requires_grad_()
    spikformer(x, torch.ones(2, 3, dtype=torch.bool)).pow(
        2
    ).sum().backward()  # the Heaviside encoding alone would give a zero gradient
    assert x.grad.abs().sum() > 0

    model = SpikEmo(tiny_config(), DIMS, NUM_CLASSES)
    batch = make_batch([4, 2])
    SpikEmoLoss(LossWeights(), NUM_CLASSES)(model(batch), batch).total.backward()
    for projection in model.projections.values():
        assert torch.isfinite(projection.weight.grad).all() and projection.weight.grad.abs().sum() > 0


def test_precision_autocasts_where_asked_and_auto_is_fp32_on_cpu() -> None:
    layer = torch.nn.Linear(4, 4)
    for precision, expected in [("bf16", torch.bfloat16), ("fp32", torch.float32), ("auto", torch.float32)]:
        with autocast(precision, torch.device("cpu")):
            assert layer(torch.ones(1, 4)).dtype == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiny_model_overfits_a_tiny_batch(precision):
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(dropout=0.0), DIMS, NUM_CLASSES)
    batch = make_batch([5, 3, 4], seed=4)
    criterion = SpikEmoLoss(LossWeights(ce=1.0, dice=0.0, soft_hgr=0.1), NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        with autocast(precision, torch.device("cpu")):
            output = model(batch)
        assert output.logits.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        loss = criterion(output, batch).total
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    predictions = model.eval()(batch).logits.argmax(-1)
    labelled = batch.labels != IGNORE_INDEX
    assert (predictions[labelled] == batch.labels[labelled]).float().mean() > 0.9


SUBSETS = [list(c) for r in (1, 2, 3) for c in itertools.combinations(DIMS, r)]


@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_any_modality_subset_runs(modalities):
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(), {m: DIMS[m] for m in modalities}, NUM_CLASSES)
    batch = make_batch([3, 2], modalities=modalities)
    output = model(batch)
    breakdown = SpikEmoLoss(LossWeights(), NUM_CLASSES)(output, batch)
    assert output.logits.shape == (2, 3, NUM_CLASSES)
    assert ("soft_hgr" in breakdown.terms) == (len(modalities) > 1)
    breakdown.total.backward()


def test_model_rejects_a_batch_without_its_modalities():
    model = SpikEmo(tiny_config(), DIMS, NUM_CLASSES)
    with pytest.raises(ValueError, match="visual"):
        model(make_batch([2], modalities=("text", "audio")))


def test_without_spiking_branch():
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(use_spiking=False), DIMS, NUM_CLASSES)
    assert model.spikformer is None
    assert not any(isinstance(m, MultiStepLIF) for m in model.modules())
    assert model(make_batch([3, 1])).logits.shape == (2, 3, NUM_CLASSES)


def test_spike_monitor_reports_every_lif_layer():
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(spikformer_depth=2), DIMS, NUM_CLASSES)
    lif_names = {name for name, m in model.named_modules() if isinstance(m, MultiStepLIF)}
    with SpikeMonitor(model) as monitor:
        model(make_batch([4, 2]))
        model(make_batch([3], seed=5))
    rates = monitor.firing_rates()
    assert set(rates) == lif_names and len(lif_names) == 2 * 7
    assert all(0.0 <= rate <= 1.0 for rate in rates.values())
    assert any(rate > 0 for rate in rates.values())
    energy = monitor.energy()
    assert energy["synaptic_ops"] > 0 and energy["dense_macs"] > 0
    assert energy["snn_energy_mj"] == pytest.approx(energy["synaptic_ops"] * 0.9e-9)
    assert energy["ann_energy_mj"] == pytest.approx(energy["dense_macs"] * 4.6e-9)
    model(make_batch([2]))  # hooks are gone after the block
    assert monitor.firing_rates() == rates


def test_batch_to_moves_every_tensor():
    batch = make_batch([2, 1]).to("cpu")
    assert batch.modalities == list(DIMS)
    assert batch.batch_size == 2 and batch.max_length == 2


def _first_layer_spikes(model: SpikEmo, batch: DialogueBatch) -> dict[str, torch.Tensor]:
    """Per modality, the spike trains ``[N, T, D]`` of the first spiking layer for its present utterances."""
    captured = []
    layer = model.spikformer.blocks[0].attention.query.lif
    handle = layer.register_forward_hook(lambda module, inputs, spikes: captured.append(spikes.detach()))
    model.eval()(batch)
    handle.remove()
    counts = [int((batch.modality_mask[m] & batch.utterance_mask).sum()) for m in model.modalities]
    return dict(zip(model.modalities, captured[0].transpose(0, 1).split(counts)))


def test_direct_encoding_gives_every_utterance_its_own_spike_train_in_every_modality():
    torch.manual_seed(0)
    batch = make_batch([6, 4])
    model = SpikEmo(tiny_config(model_dim=32, timesteps=8), DIMS, NUM_CLASSES)
    for modality, spikes in _first_layer_spikes(model, batch).items():
        trains = spikes.flatten(1)
        assert len(torch.unique(trains, dim=0)) == len(trains), modality  # no two utterances spike alike
        rates = spikes.mean(dim=(1, 2))
        assert 0 < rates.min() and rates.max() < 1 and rates.std() > 0, modality

    # the paper's Heaviside encoding after the DialogueRNN's ReLU: every input bit is 1, so every audio and
    # visual utterance of a dialogue gets one and the same spike train
    paper_settings = {"spike_encoding": "heaviside", "spike_speaker_context": False, "dialogue_context_residual": False}
    paper = SpikEmo(tiny_config(model_dim=32, timesteps=8, **paper_settings), DIMS, NUM_CLASSES)
    paper_spikes = _first_layer_spikes(paper, batch)
    for modality in ("audio", "visual"):
        first_dialogue = paper_spikes[modality][:6].flatten(1)
        assert len(torch.unique(first_dialogue, dim=0)) == 1, modality


def test_feature_gate_starts_as_the_identity_and_learns_per_feature():
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(), DIMS, NUM_CLASSES)
    batch = make_batch([4, 2])
    hidden = {m: torch.randn(2, 4, 8) * batch.utterance_mask[..., None] for m in model.modalities}
    present = {m: batch.modality_mask[m] & batch.utterance_mask for m in model.modalities}
    gated = model._spike_gate(hidden, present, batch.party)
    for m in model.modalities:
        torch.testing.assert_close(gated[m], hidden[m])
    for gate in model.spike_gates.values():
        torch.nn.init.normal_(gate.weight)
    gated = model._spike_gate(hidden, present, batch.party)
    ratio = gated["text"][0, :4] / hidden["text"][0, :4]
    assert ratio.std(dim=1).min() > 0  # features of one utterance are scaled differently
    assert ratio.std(dim=0).min() > 0  # and one feature differently across utterances


NEURONS = [
    NeuronConfig(kind="plif"),
    NeuronConfig(kind="if", v_reset=None),
    NeuronConfig(kind="lif", surrogate="sigmoid", detach_reset=False),
    NeuronConfig(kind="lif", surrogate="piecewise_quadratic", v_reset=-0.5),
]


@pytest.mark.parametrize("settings", NEURONS, ids=["plif", "if-soft-reset", "lif-sigmoid", "lif-pwq"])
def test_spikingjelly_neurons_plug_in(settings):
    torch.manual_seed(0)
    config = tiny_config(neuron=settings)
    model = SpikEmo(config, DIMS, NUM_CLASSES)
    assert is_fused_lif(config.neuron) is False
    assert not any(isinstance(m, MultiStepLIF) for m in model.modules())
    batch = make_batch([4, 2])
    with SpikeMonitor(model) as monitor:
        output = model(batch)
    assert len(monitor.firing_rates()) == 7
    SpikEmoLoss(LossWeights(), NUM_CLASSES)(output, batch).total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.spikformer.parameters() if p.grad is not None)
    # a constant [1, ...] current gives the same spikes as the same current repeated over T
    neuron_layer = model.spikformer.blocks[0].mlp.expand.lif
    current = torch.randn(1, 5, 8) * 2
    torch.testing.assert_close(neuron_layer(current), neuron_layer(current.expand(config.timesteps, 5, 8)))


def test_input_noise_perturbs_training_passes_only():
    torch.manual_seed(0)
    quiet = SpikEmo(tiny_config(dropout=0.0), DIMS, NUM_CLASSES)
    noisy = SpikEmo(tiny_config(dropout=0.0, input_noise=0.5), DIMS, NUM_CLASSES)
    noisy.load_state_dict(quiet.state_dict())
    batch = make_batch([4, 3])
    quiet.eval(), noisy.eval()
    assert torch.equal(quiet(batch).logits, noisy(batch).logits)
    quiet.train(), noisy.train()
    torch.manual_seed(1)
    clean = quiet(batch).logits
    torch.manual_seed(1)
    assert not torch.allclose(clean, noisy(batch).logits)


def _without_identity_starts(model: SpikEmo) -> SpikEmo:
    """The spike gates and the speaker evidence start at zero (the identity): random weights make every path count."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.5)
    return model


CAUSAL_VARIANTS = [
    {},
    {"spike_gate": "utterance_softmax", "spike_encoding": "heaviside"},
    {"speaker_relative_inputs": "zscore", "speaker_evidence_rounds": 2},
    {"speaker_relative_inputs": "centred", "dialogue_context": ["text", "audio", "visual"]},
    {"use_spiking": False, "speaker_evidence_rounds": 1},
]
MODALITY_SETS = [combo for size in (1, 2, 3) for combo in itertools.combinations(DIMS, size)]


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids="+".join)
@pytest.mark.parametrize("variant", CAUSAL_VARIANTS, ids=lambda v: ",".join(v) or "default")
def test_causal_predictions_for_a_turn_do_not_change_when_later_turns_arrive(modalities, variant):
    torch.manual_seed(0)
    config = firing_config(causal=True, **variant)
    model = _without_identity_starts(SpikEmo(config, {m: DIMS[m] for m in modalities}, NUM_CLASSES)).double().eval()
    whole = make_batch([7, 5], modalities=modalities, seed=3, dtype=torch.float64)
    whole.party = torch.tensor([[0, 1, 0, 0, 1, 2, 0], [1, 0, 1, 1, 0, 0, 0]])
    whole.modality_mask[modalities[0]][0, 2] = False  # an absent modality on an earlier turn
    logits = model(whole).logits
    for k in range(7):
        cut = DialogueBatch(
            features={m: x[:, : k + 1] for m, x in whole.features.items()},
            modality_mask={m: x[:, : k + 1] for m, x in whole.modality_mask.items()},
            utterance_mask=whole.utterance_mask[:, : k + 1],
            party=whole.party[:, : k + 1],
            labels=whole.labels[:, : k + 1],
        )
        torch.testing.assert_close(model(cut).logits[0, k], logits[0, k], rtol=0, atol=1e-12)
    changed = make_batch([7, 5], modalities=modalities, seed=3, dtype=torch.float64)
    changed.party, changed.modality_mask = whole.party, whole.modality_mask
    for m in modalities:
        changed.features[m][0, 6] += 3.0  # the last turn only
    assert torch.equal(model(changed).logits[0, :6], logits[0, :6])


@pytest.mark.parametrize("variant", CAUSAL_VARIANTS, ids=lambda v: ",".join(v) or "default")
def test_the_bidirectional_default_reads_later_turns(variant):
    torch.manual_seed(0)
    model = _without_identity_starts(SpikEmo(firing_config(**variant), DIMS, NUM_CLASSES)).double().eval()
    batch = make_batch([7], seed=3, dtype=torch.float64)
    batch.party = torch.tensor([[0, 1, 0, 0, 1, 2, 0]])
    reference = model(batch).logits
    for m in DIMS:
        batch.features[m][0, 6] += 3.0
    assert not torch.allclose(model(batch).logits[0, :6], reference[0, :6])


def test_a_lone_utterance_is_z_scored_against_the_training_population_not_itself():
    torch.manual_seed(0)
    clips = make_batch([1, 1, 1, 1], modalities=("audio",), seed=6, dtype=torch.float64)  # four one-clip "sessions"
    logits = {}
    for minimum in (1, 2):
        config = tiny_config(speaker_relative_inputs="zscore", speaker_min_utterances=minimum, dialogue_context=[])
        torch.manual_seed(0)
        model = SpikEmo(config, {"audio": DIMS["audio"]}, NUM_CLASSES).double().eval()
        logits[minimum] = model(clips).logits[:, 0]
    assert torch.allclose(logits[1], logits[1][:1].expand_as(logits[1]))  # own statistics: every clip looks the same
    assert not torch.allclose(logits[2], logits[2][:1].expand_as(logits[2]))  # population statistics: clips differ


def test_a_seed_ensemble_averages_its_members_probabilities():
    torch.manual_seed(0)
    ensemble = build_model(tiny_config(members=3), DIMS, NUM_CLASSES).eval()
    batch = make_batch([5, 2])
    assert isinstance(ensemble, SpikEmoEnsemble) and len(ensemble.members) == 3
    assert all(member.config.members == 1 for member in ensemble.members)

    output = ensemble(batch)
    members = [member(batch) for member in ensemble.members]
    mean = torch.stack([m.logits.softmax(-1) for m in members]).mean(0)
    real = batch.utterance_mask
    assert torch.allclose(output.logits.softmax(-1)[real], mean[real], atol=1e-6)
    assert not torch.allclose(members[0].logits[real], members[1].logits[real])  # members start apart
    assert (output.logits[~real] == 0).all()
    assert output.modality_features["text"].shape == (2, 5, 3 * 8)
