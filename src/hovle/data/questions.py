"""Captions, conversations and evaluation questions about the nano recipe's images.

Training text (stage II captions, stage III conversations) is drawn from several phrasings; the
held-out questions of ``eval.jsonl``, one of each of ``EVAL_KINDS`` per image, use fixed ones.
"""

from __future__ import annotations

import random

from .sources import FASHION_CLASSES


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


# Short phrasings: on a CPU a caption costs its length in passes through the whole LLM, and the
# class name, the part that must be learnt, is then a larger share of each one.
_CAPTIONS = (
    "A photo of {a}.",
    "This is {a}.",
    "{A}.",
    "An image of {a}.",
    "A picture of {a}.",
    "A grayscale photo of {a}.",
    "{A} on a dark background.",
    "A small photo of {a}.",
)
# (phrasing, weight): "What is this?" is the question asked at evaluation, so it dominates.
_WHAT = (
    ("What is this?", 5),
    ("What is in the image?", 1),
    ("What item of clothing is shown?", 1),
    ("What is shown in this picture?", 1),
    ("What object is this?", 1),
    ("Name the item in the image.", 1),
)
_YESNO = ("Is this {a}?", "Is there {a} in the image?", "Does the image show {a}?", "Is this picture of {a}?")
_CHOICE = (
    "Which of these is it: {x}, {y} or {z}?",
    "Is it {ax}, {ay} or {az}?",
    "Which one is shown: {x}, {y} or {z}?",
    "Choose one: {x}, {y} or {z}.",
)
_DESCRIBE = (
    "Describe the image.",
    "Describe this picture briefly.",
    "What does the image show? Answer in one sentence.",
)
_DESCRIPTIONS = (
    "A grayscale image of {a} on a black background.",
    "The image shows {a} in gray tones on a black background.",
    "A small black-and-white picture of {a}, centred on a dark background.",
)
_KINDS = ("what", "yesno", "choice", "describe")
# "What is it?" is the skill evaluated against a target, and descriptions are the longest samples.
_KIND_WEIGHTS = (4, 3, 2, 1)
# The held-out question kinds ("kind" in eval.jsonl).
EVAL_KINDS = ("what", "yesno", "choice")


def _other_classes(rng: random.Random, label: int, count: int) -> list[int]:
    return rng.sample([index for index in range(len(FASHION_CLASSES)) if index != label], count)


def yesno_answer(name: str, yes: bool) -> str:
    """A yes/no answer that names what the image shows first, then compares: "It is a sandal, so
    no." The frozen LLM cannot compare an image with a class named in the question in one step
    (trained on bare "Yes"/"No" its answers were 97% "No", at chance), but it can compare two
    words it has read; one sentence, so that POPE's rule reads the verdict."""
    return f"It is {_a(name)}, so {'yes' if yes else 'no'}."


def _question(rng: random.Random, kind: str, label: int, yes: bool | None = None) -> tuple[str, str, dict]:
    """(question, answer, extra record fields) of one question of ``kind`` about class ``label``."""
    name = FASHION_CLASSES[label]
    if kind == "what":
        phrasings, weights = zip(*_WHAT)
        return rng.choices(phrasings, weights)[0], name, {}
    if kind == "yesno":
        yes = rng.random() < 0.5 if yes is None else yes
        asked = label if yes else _other_classes(rng, label, 1)[0]
        return rng.choice(_YESNO).format(a=_a(FASHION_CLASSES[asked])), yesno_answer(name, yes), {}
    if kind == "choice":
        options = [name] + [FASHION_CLASSES[i] for i in _other_classes(rng, label, 2)]
        rng.shuffle(options)
        x, y, z = options
        question = rng.choice(_CHOICE).format(x=x, y=y, z=z, ax=_a(x), ay=_a(y), az=_a(z))
        return question, name, {"options": options}
    if kind == "describe":
        description = rng.choice(_DESCRIPTIONS).format(a=_a(name))
        return rng.choice(_DESCRIBE), description, {}
    raise ValueError(f"unknown question kind {kind!r}")


def caption(rng: random.Random, label: int) -> str:
    name = _a(FASHION_CLASSES[label])
    return rng.choice(_CAPTIONS).format(a=name, A=_capital(name))


# Yes/no questions come in contrasting rounds about one image: the class it shows and classes it
# does not, so that the answer can only be learnt by comparing the image with the question.
YESNO_ROUNDS = 3


def conversation(rng: random.Random, label: int) -> list[dict]:
    first = rng.choices(_KINDS, _KIND_WEIGHTS)[0]
    if first == "yesno":
        answers = [True, False] + [rng.random() < 0.5 for _ in range(YESNO_ROUNDS - 2)]
        rng.shuffle(answers)
        rounds = [_question(rng, "yesno", label, yes) for yes in answers]
    else:
        kinds = [first]
        if rng.random() < 0.2:  # a second round teaches follow-up questions about the same image
            kinds.append(rng.choice([kind for kind in _KINDS if kind not in (first, "yesno")]))
        rounds = [_question(rng, kind, label) for kind in kinds]
    turns = []
    for round_index, (question, answer, _) in enumerate(rounds):
        if round_index == 0:
            question = "<image>\n" + question
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def eval_questions(rng: random.Random, image: str, label: int, yes: bool) -> list[dict]:
    """The three held-out questions about one image, in fixed phrasings."""
    name = FASHION_CLASSES[label]
    asked = label if yes else _other_classes(rng, label, 1)[0]
    options = [name] + [FASHION_CLASSES[i] for i in _other_classes(rng, label, 2)]
    rng.shuffle(options)
    return [
        {"image": image, "kind": "what", "question": "What is this?", "answer": name, "label": name},
        {
            "image": image,
            "kind": "yesno",
            "question": f"Is this {_a(FASHION_CLASSES[asked])}?",
            "answer": "Yes" if yes else "No",
            "label": name,
        },
        {
            "image": image,
            "kind": "choice",
            "question": "Which of these is it: {}, {} or {}?".format(*options),
            "answer": name,
            "label": name,
            "options": options,
        },
    ]


# ---------------------------------------------------------------------------------------------
# easy-vqa: the package's own questions, and captions made from what they say about each image

EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
_EASY_VQA_CAPTIONS = (
    "A {color} {shape}.",
    "A {color} {shape} on a white background.",
    "This is a {color} {shape}.",
    "An image of a {color} {shape}.",
    "A picture of a {color} {shape}.",
)
# Questions a conversation about one easy-vqa image asks at most (rounds after the first are cheap:
# the image and the earlier turns are already in the sequence).
EASY_VQA_ROUNDS = 3


def easy_vqa_attributes(questions) -> dict[int, tuple[str, str]]:
    """{image id: (shape, colour)} for every image whose questions reveal both: an open answer
    is its shape or colour, and so is the shape or colour a question names ("what is the red
    shape?", "is there a circle?" answered yes, "is there not a red shape?" answered no)."""
    shapes: dict[int, str] = {}
    colors: dict[int, str] = {}
    for text, answer, image in questions:
        words = text.rstrip("?").split()
        named = [w for w in words if w in EASY_VQA_SHAPES or w in EASY_VQA_COLORS]
        if answer in ("yes", "no"):
            negated = "not" in words or words[:2] == ["is", "no"]
            found = named if (answer == "yes") != negated else []  # else: only what is absent
        else:
            found = named + [answer]
        for word in found:
            (shapes if word in EASY_VQA_SHAPES else colors)[image] = word
    return {image: (shapes[image], colors[image]) for image in shapes if image in colors}


def easy_vqa_caption(rng: random.Random, shape: str, color: str) -> str:
    return rng.choice(_EASY_VQA_CAPTIONS).format(shape=shape, color=color)


def easy_vqa_conversations(rng: random.Random, pairs: list[tuple[str, str]]) -> list[list[dict]]:
    """An image's (question, answer) pairs, shuffled, as conversations of up to ``EASY_VQA_ROUNDS``
    rounds; questions and answers as the package writes them (lower case), which is also how
    ``hovle eval --benchmark easy-vqa`` asks them."""
    pairs = list(pairs)
    rng.shuffle(pairs)
    out = []
    for start in range(0, len(pairs), EASY_VQA_ROUNDS):
        turns = []
        for index, (question, answer) in enumerate(pairs[start : start + EASY_VQA_ROUNDS]):
            turns += [{"from": "human", "value": ("<image>\n" if index == 0 else "") + question},
                      {"from": "gpt", "value": answer}]
        out.append(turns)
    return out
