"""A generated multimodal demo corpus in MELD's raw layout: speech (espeak-ng) and drawn faces (OpenCV).

Generative model, per dialogue (details and the ideal accuracies in ``docs/demo_corpus.md``):

1. 2-4 characters from a fixed cast (each with its own voice and face) take 5-12 turns; everyone speaks
   once, then nobody speaks twice in a row.
2. Emotions follow one Markov chain per speaker: a speaker's first turn draws from MELD's label frequencies
   (neutral 0.47, joy 0.17, surprise 0.12, anger 0.11, sadness 0.07, disgust 0.03, fear 0.03); each later
   turn keeps their previous emotion with probability ``persistence`` (0.6), else redraws from the same
   frequencies, so the frequencies are also the chain's stationary distribution.
3. Each modality independently shows a cue: the true emotion with probability ``cue_reliability``
   (text 0.6, audio 0.5, visual 0.5), else neutral (probability ``neutral_when_hidden`` = 0.6) or a
   conflicting emotion drawn uniformly from the other non-neutral emotions. The text cue picks the sentence
   template, the audio cue the espeak-ng prosody (pitch, pitch range, rate, volume), the visual cue the
   face's expression (mouth curve and opening, brow height and tilt, eye opening).

An ideal model that reads each cue perfectly reaches (dialogues as the generator draws them):
text 0.71, audio 0.64, visual 0.64, all three 0.80 one utterance at a time, and more with the same
speaker's other turns (see ``spikemo.data.demo.ideal`` and the doc); always answering neutral gets 0.47.

Public API: ``make_demo_corpus(out, DemoCorpusSettings(...)) -> DemoCorpusSummary`` writes the corpus;
``plan_demo_corpus(settings)`` and ``write_annotations(plan, out)`` give the annotations alone, without media.
"""

from spikemo.data.demo.corpus import DemoCorpusSummary, make_demo_corpus
from spikemo.data.demo.ideal import IdealAccuracy, ideal_accuracies, majority_accuracy
from spikemo.data.demo.plan import PlannedUtterance, plan_demo_corpus, write_annotations
from spikemo.data.demo.settings import DemoCorpusSettings

__all__ = [
    "DemoCorpusSettings",
    "DemoCorpusSummary",
    "IdealAccuracy",
    "PlannedUtterance",
    "ideal_accuracies",
    "majority_accuracy",
    "make_demo_corpus",
    "plan_demo_corpus",
    "write_annotations",
]
