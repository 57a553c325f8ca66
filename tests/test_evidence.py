"""Speaker-chain evidence: the neighbours it reads, the speakers it ignores, and the identity it starts as."""

from __future__ import annotations

import numpy as np
import torch

from spikemo.model.evidence import SpeakerEvidence, _nearest, _same_speaker
from spikemo.model.spikemo import SpikEmo
from spikemo.training.cross_fit import fit_speaker_evidence
from spikemo.training.data import Dialogue, DialogueDataset, collate_dialogues
from tests.test_model import DIMS, NUM_CLASSES, make_batch, tiny_config


def test_nearest_turns_of_the_same_speaker():
    party = torch.tensor([[0, 1, 0, 0, 1, 7]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    same = _same_speaker(party, mask)
    previous, has_previous = _nearest(same, earlier=True)
    following, has_following = _nearest(same, earlier=False)
    assert has_previous.tolist() == [[False, False, True, True, True, False]]
    assert previous[0, 2:5].tolist() == [0, 2, 1]
    assert has_following.tolist() == [[True, True, True, False, False, False]]
    assert following[0, :3].tolist() == [2, 4, 3]


def test_starts_as_the_identity_and_reads_only_the_same_speakers_turns():
    torch.manual_seed(0)
    evidence = SpeakerEvidence(NUM_CLASSES, rounds=1).double()
    logits = torch.randn(1, 5, NUM_CLASSES, dtype=torch.float64)
    party = torch.tensor([[0, 1, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, True, False]])  # the last position is padding
    torch.testing.assert_close(evidence(logits, party, mask), logits)

    torch.nn.init.normal_(evidence.mix.weight)
    reference = evidence(logits, party, mask)
    moved = logits.clone()
    moved[0, 1] += torch.tensor([5.0, -5.0, 0.0], dtype=torch.float64)  # speaker 1's first turn
    moved[0, 4] += 9.0  # padding
    changed = evidence(moved, party, mask)
    torch.testing.assert_close(changed[0, [0, 2]], reference[0, [0, 2]])  # speaker 0 never reads speaker 1
    assert not torch.allclose(changed[0, 3], reference[0, 3])  # speaker 1's other turn does


def test_model_with_evidence_trains_and_keeps_padding_zero():
    torch.manual_seed(0)
    model = SpikEmo(tiny_config(speaker_evidence_rounds=2), DIMS, NUM_CLASSES)
    batch = make_batch([5, 3], seed=1)
    output = model(batch)
    assert output.logits[1, 3:].abs().max() == 0
    output.logits[batch.utterance_mask].logsumexp(-1).sum().backward()
    assert model.speaker_evidence.mix.weight.grad.abs().sum() > 0


def test_fitting_on_fixed_logits_learns_that_a_speakers_turns_agree():
    """Each speaker keeps one emotion through a dialogue, and the logits point at it on some turns only: the
    fitted evidence reads the speaker's other turns and gets the rest right."""
    torch.manual_seed(0)
    dialogues, logits = [], []
    for _ in range(40):
        party = torch.tensor([0, 1, 0, 1, 0, 1])
        emotion = torch.randint(NUM_CLASSES, (2,))
        labels = emotion[party]
        turn_logits = torch.randn(6, NUM_CLASSES) * 0.1
        turn_logits[:2] += 4.0 * torch.nn.functional.one_hot(labels[:2], NUM_CLASSES)  # only the first turns are clear
        features = {"text": torch.zeros(6, 1)}
        dialogues.append(Dialogue(features, {"text": torch.ones(6, dtype=torch.bool)}, party, labels))
        logits.append(turn_logits)
    dataset = _dataset(dialogues)
    evidence = fit_speaker_evidence(logits, dataset, SpeakerEvidence(NUM_CLASSES, rounds=1), None)

    batch = collate_dialogues(dialogues)
    padded = torch.stack(logits)
    with torch.no_grad():
        corrected = evidence(padded, batch.party, batch.utterance_mask)
    later = slice(2, None)
    before = (padded[:, later].argmax(-1) == batch.labels[:, later]).float().mean()
    after = (corrected[:, later].argmax(-1) == batch.labels[:, later]).float().mean()
    assert before < 0.6 and after > 0.95


def _dataset(dialogues: list[Dialogue]) -> DialogueDataset:
    lengths = [len(dialogue) for dialogue in dialogues]
    return DialogueDataset(
        split="train",
        utterance_keys=np.array([f"d{d}/{t}" for d, length in enumerate(lengths) for t in range(length)]),
        dialogue_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        features={"text": torch.cat([d.features["text"] for d in dialogues]).numpy()},
        modality_mask={"text": torch.cat([d.modality_mask["text"] for d in dialogues]).numpy()},
        party=torch.cat([d.party for d in dialogues]).numpy(),
        labels=torch.cat([d.labels for d in dialogues]).numpy(),
    )
