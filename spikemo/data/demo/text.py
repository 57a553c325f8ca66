"""Utterance text: per-emotion templates and neutral carrier sentences, filled with varied vocabulary."""

from __future__ import annotations

import numpy as np

TEMPLATES = {
    "neutral": (
        "I'll be at the {place} around {clock}.",
        "Did you pick up the {thing} on your way?",
        "{name}, can you pass me the {thing}?",
        "We should probably leave at {clock}.",
        "So the {thing} is in the {place}, right next to the door.",
        "I think the meeting moved to {day}.",
        "Okay, I'll call {name} about the {thing} later.",
        "The bus to the {place} takes about twenty minutes.",
        "Let me check my calendar for {day}.",
        "{name} said the {thing} needs a new battery.",
        "Are we still doing dinner on {day}?",
        "I put the {thing} back where it was.",
    ),
    "joy": (
        "This is wonderful, {name}! I love the {thing}!",
        "Yes! We finally got tickets for {day}!",
        "Ha ha, you made my whole week, {name}.",
        "I am so happy right now, this is the best {day} ever!",
        "Oh, that is fantastic news about the {place}!",
        "I can't stop smiling, the {thing} is perfect.",
        "Congratulations, {name}! I'm so proud of you!",
        "That was amazing, let's do it again on {day}!",
    ),
    "surprise": (
        "Wait, what? You sold the {thing}?",
        "No way! Since when does {name} work at the {place}?",
        "Whoa, I did not see that coming!",
        "Really? On {day}? Are you serious?",
        "Oh! You scared me, I didn't know you were in the {place}.",
        "What? The {thing} was there the whole time?",
        "Seriously, {name}? You never told me that!",
        "Huh! Nobody expected that at the {place}.",
    ),
    "fear": (
        "I'm scared, {name}, there's something in the {place}.",
        "Oh no, what if they find out about the {thing}?",
        "Please don't leave me alone here tonight.",
        "I heard a noise near the {place}, I'm terrified.",
        "What if the {thing} breaks again? I can't handle that.",
        "My hands are shaking, I really don't want to go on {day}.",
        "Something is wrong, {name}, I have a bad feeling about this.",
        "Did you hear that? Someone is outside the {place}!",
    ),
    "sadness": (
        "I miss the old {place} so much.",
        "I guess nobody cares about the {thing} anymore.",
        "It's over, {name}. She's not coming back.",
        "I just feel so alone since {day}.",
        "We lost the {thing}, and it was all I had left.",
        "I'm sorry, {name}. I really tried my best.",
        "Nothing has been the same since we left the {place}.",
        "I cried the whole way home on {day}.",
    ),
    "disgust": (
        "Ew, that {thing} smells horrible.",
        "Gross! I can't even look at it.",
        "Ugh, {name}, that is absolutely disgusting.",
        "Who left this rotten food in the {place}?",
        "That's revolting. Get the {thing} away from me.",
        "Yuck, I think I'm going to be sick.",
        "I can't believe you'd eat that, {name}. Nasty.",
        "Ugh, the whole {place} is filthy.",
    ),
    "anger": (
        "Stop it, {name}! I told you not to touch my {thing}!",
        "This is ridiculous, I'm sick of it!",
        "How dare you lie to me about {day}!",
        "Get out of the {place} right now!",
        "I am furious, {name}, you broke the {thing} again!",
        "Don't you ever talk to me like that!",
        "You always ruin everything at the {place}!",
        "That's it, I've had enough of your excuses!",
    ),
}

VOCABULARY = {
    "thing": (
        "guitar",
        "couch",
        "laptop",
        "sandwich",
        "camera",
        "bike",
        "lamp",
        "ring",
        "jacket",
        "coffee machine",
        "painting",
        "keys",
        "umbrella",
        "puppy",
        "cake",
        "letter",
    ),
    "place": (
        "coffee house",
        "kitchen",
        "museum",
        "office",
        "hallway",
        "park",
        "hospital",
        "garage",
        "bakery",
        "library",
        "basement",
        "beach house",
    ),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "clock": ("six", "seven thirty", "noon", "half past four", "eight", "nine fifteen", "ten"),
}


def write_utterance(emotion: str, listener: str, rng: np.random.Generator) -> str:
    """A sentence whose wording shows ``emotion`` (neutral carriers for ``neutral``), addressed to ``listener``."""
    templates = TEMPLATES[emotion]
    template = templates[rng.integers(len(templates))]
    slots = {slot: words[rng.integers(len(words))] for slot, words in VOCABULARY.items()}
    return template.format(name=listener, **slots)
