"""Chat templates and image placeholders: the exact prompt strings the model was trained on.

The released model uses InternVL's ``internlm2-chat`` template (docs/model.md, 2.5). Its
turns are joined with no newline between ``<|im_end|>`` and the next ``<|im_start|>``; one
character off here silently costs accuracy, so the tests compare rendered strings with the
released ones.

A rendered prompt is a :class:`Prompt`: a string that also knows which of its parts are chat
markup (role tags, end-of-turn tokens, image tokens) and which are text someone wrote (system
message, questions, answers). Only markup becomes special tokens: a user who types
``<|im_end|>`` or ``<s>`` gets those characters as text, and ``<image>`` is expanded only in
questions, never in a system message or an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import HoVLEError

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"

# InternVL's default system message, which the released HoVLE chat uses.
DEFAULT_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)


class PromptError(HoVLEError, ValueError):
    """A prompt whose image placeholders do not match the images given."""


class Prompt(str):
    """A rendered prompt: the string, and its parts as ``spans`` of (text, is_markup).

    Tokenizers' ``encode_spans`` turn special-token strings into tokens in markup spans only.
    String operations on a ``Prompt`` give a plain ``str``, which tokenizes as all markup.
    """

    spans: tuple[tuple[str, bool], ...]

    def __new__(cls, spans):
        spans = tuple((text, bool(markup)) for text, markup in spans if text)
        prompt = super().__new__(cls, "".join(text for text, _ in spans))
        prompt.spans = spans
        return prompt


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system: str  # formatted with {system_message}
    user: str
    assistant: str
    end_of_turn: str

    def render(
        self,
        turns: Sequence[tuple[str, str | None]],
        system_message: str,
        reply_prefix: str = "",
        question_spans: Callable[[str], list[tuple[str, bool]]] | None = None,
    ) -> Prompt:
        """``turns`` are (question, answer) pairs; an answer of None (or "") opens the assistant turn.

        An empty message leaves its role open, as the released (MPT-style) template does. Answers
        are written after ``reply_prefix`` (see ``Recipe.reply_prefix``). ``question_spans``
        turns a question into spans (e.g. with its ``<image>`` tags expanded); by default the
        question is plain text.
        """
        as_spans = question_spans or (lambda question: [(question, False)])
        before, after = self.system.split("{system_message}")
        spans = [(before, True), (system_message, False), (after + self.end_of_turn, True)]
        for question, answer in turns:
            spans.append((self.user, True))
            if question:
                spans += [*as_spans(question), (self.end_of_turn, True)]
            spans.append((self.assistant, True))
            if answer:
                spans += [(reply_prefix + answer, False), (self.end_of_turn, True)]
        return Prompt(spans)


TEMPLATES = {
    "internlm2-chat": ChatTemplate(
        name="internlm2-chat",
        system="<|im_start|>system\n{system_message}",
        user="<|im_start|>user\n",
        assistant="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
    ),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise PromptError(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def image_tokens(tiles: int, tokens_per_tile: int) -> str:
    """What one ``<image>`` placeholder expands to."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (tokens_per_tile * tiles) + IMG_END_TOKEN


def render_prompt(
    question: str,
    history: Sequence[tuple[str, str]] | None = None,
    num_patches_list: Sequence[int] | None = None,
    system_message: str = DEFAULT_SYSTEM_MESSAGE,
    template: str | ChatTemplate = "internlm2-chat",
    tokens_per_tile: int = 256,
    reply_prefix: str = "",
) -> str:
    """The exact prompt string that is tokenized, image placeholders expanded.

    ``num_patches_list`` gives the tile count of each image, in placeholder order across the
    history and the question. As in the released chat, a question without ``<image>`` gets
    ``<image>\\n`` in front when there is no history and there are images (one per image).
    """
    template = get_template(template) if isinstance(template, str) else template
    num_patches_list = list(num_patches_list or [])
    history = list(history or [])
    question = with_image_placeholders(question, history, len(num_patches_list))
    _check_placeholders([q for q, _ in history] + [question], len(num_patches_list))
    return template.render([*history, (question, None)], system_message, reply_prefix,
                           question_spans=image_expander(num_patches_list, tokens_per_tile))


def image_expander(num_patches_list: Sequence[int], tokens_per_tile: int) -> Callable[[str], list[tuple[str, bool]]]:
    """Spans of a text whose ``<image>`` tags become image tokens, tile counts taken in order
    across the calls (one conversation's questions)."""
    tiles = iter(num_patches_list)

    def spans(text: str) -> list[tuple[str, bool]]:
        pieces = text.split(IMAGE_PLACEHOLDER)
        out = [(pieces[0], False)]
        for piece in pieces[1:]:
            count = next(tiles, None)
            if count is None:
                raise PromptError(f"more {IMAGE_PLACEHOLDER} tags than the {len(num_patches_list)} images given")
            out += [(image_tokens(count, tokens_per_tile), True), (piece, False)]
        return out

    return spans


def with_image_placeholders(question: str, history: Sequence, num_images: int) -> str:
    """The question as the conversation records it: ``<image>\n`` per image in front of a first
    question that has no placeholder of its own."""
    if num_images and not history and IMAGE_PLACEHOLDER not in question:
        return (IMAGE_PLACEHOLDER + "\n") * num_images + question
    return question


def _check_placeholders(questions: Sequence[str], num_images: int) -> None:
    found = sum(q.count(IMAGE_PLACEHOLDER) for q in questions)
    if found == num_images:
        return
    if found < num_images:
        missing = ", ".join(str(i) for i in range(found + 1, num_images + 1))
        raise PromptError(
            f"{num_images} images were given but the prompt has {found} {IMAGE_PLACEHOLDER} placeholders: "
            f"image(s) {missing} have no {IMAGE_PLACEHOLDER} tag (write one {IMAGE_PLACEHOLDER} per image, "
            f"e.g. 'Image-1: {IMAGE_PLACEHOLDER}\\nImage-2: {IMAGE_PLACEHOLDER}\\n...')"
        )
    raise PromptError(
        f"the prompt has {found} {IMAGE_PLACEHOLDER} placeholders but only {num_images} images were given"
    )
