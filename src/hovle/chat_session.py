"""The interactive conversation behind ``hovle chat``: turns, their images, and a context that fits.

A session keeps each turn with the images it brought, so that when the conversation no longer
fits the model's context (prompt plus room for a full answer) the oldest turns can be dropped
together with their images. A line that cannot be answered (a bad image path, a prompt error, a
question longer than the context) is reported and the session goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .errors import ContextLengthError, HoVLEError
from .generation import context_room
from .processing.prompts import IMAGE_PLACEHOLDER

HELP = ("interactive chat: /image PATH attaches an image to the next question, /reset clears the "
        "conversation, /exit or Ctrl-D quits")


@dataclass
class Turn:
    question: str  # as the prompt records it, with one <image> per image of the turn
    answer: str
    tiles: list[int] = field(default_factory=list)  # tiles of each image the question placed
    pixels: list[torch.Tensor] = field(default_factory=list)


class ChatSession:
    """One conversation with a model; ``ask`` streams an answer and records the turn.

    ``images`` go with the first question, and again with the first question after ``reset``.
    """

    def __init__(self, model, processor, generation: dict, images=(), max_tiles: int | None = None,
                 say: Callable[[str], None] | None = None):
        self.model = model
        self.processor = processor
        self.generation = generation
        self.max_tiles = max_tiles
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.turns: list[Turn] = []
        self.pending = Turn("", "")  # images attached for the next question
        for image in images:
            self.attach(image)
        self._initial = (list(self.pending.tiles), list(self.pending.pixels))

    def attach(self, image) -> int:
        """Tile ``image`` for the next question; returns its tile count (raises ``ImageError``)."""
        pixels, tiles = self.processor.process_images([image], self.max_tiles)
        self.pending.tiles += tiles
        self.pending.pixels.append(pixels)
        return tiles[0]

    def reset(self) -> None:
        self.turns = []
        self.pending = Turn("", "", list(self._initial[0]), list(self._initial[1]))

    def _inputs(self, question: str):
        history = [(t.question, t.answer) for t in self.turns]
        tiles = [n for t in self.turns for n in t.tiles] + self.pending.tiles
        pixels = [p for t in self.turns for p in t.pixels] + self.pending.pixels
        return history, tiles, (torch.cat(pixels) if pixels else None)

    def _question(self, text: str) -> str:
        """The question with one ``<image>`` per attached image it does not place itself."""
        missing = len(self.pending.tiles) - text.count(IMAGE_PLACEHOLDER)
        return (IMAGE_PLACEHOLDER + "\n") * max(missing, 0) + text

    def _fit(self, question: str) -> None:
        """Drop the oldest turns until prompt + a full answer fit the context (or none is left)."""
        wanted = int(self.generation.get("max_new_tokens", 512))
        dropped = 0
        while True:
            history, tiles, _ = self._inputs(question)
            prompt = self.processor.render_prompt(question, history, tiles)
            try:
                ids = self.processor.encode_prompt(prompt)
                room = context_room(self.model.config, torch.tensor([ids]))
            except ContextLengthError:
                if not self.turns:
                    raise
                room = -1
            if room >= wanted or not self.turns:
                break
            self.turns.pop(0)
            dropped += 1
        if dropped:
            self.say(f"(the conversation no longer fits the model's context: dropped the oldest "
                     f"{'turn' if dropped == 1 else f'{dropped} turns'})")

    def ask(self, text: str) -> Iterator[str]:
        """The answer to ``text`` as a stream; the turn is kept once the answer is complete.

        The prompt is checked (and old turns dropped) here, before the first piece is asked for.
        """
        question = self._question(text)
        self._fit(question)
        return self._answer(question)

    def _answer(self, question: str) -> Iterator[str]:
        history, tiles, pixel_values = self._inputs(question)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        pieces = []
        for piece in self.model.stream_chat(self.processor, pixel_values, question, self.generation, history, tiles):
            pieces.append(piece)
            yield piece
        self.turns.append(Turn(question, "".join(pieces), self.pending.tiles, self.pending.pixels))
        self.pending = Turn("", "")


def run_interactive(session: ChatSession, read_line: Callable[[str], str] | None = None) -> int:
    """Read questions and commands until /exit or end of input; a bad line is reported, not fatal."""
    read_line = read_line or input
    session.say(HELP)
    while True:
        try:
            line = read_line("user> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        command = line.strip()
        if command == "/exit":
            return 0
        if command == "/reset":
            session.reset()
            continue
        if not command:
            continue
        try:
            if command.startswith("/image"):
                path = command[len("/image"):].strip()
                if not path:
                    raise FileNotFoundError("/image needs a path: /image photo.jpg")
                tiles = session.attach(path)
                session.say(f"attached {path} ({tiles} tile{'s' if tiles != 1 else ''}) to the next question")
                continue
            answer = session.ask(line)
            print("assistant> ", end="", flush=True)
            for piece in answer:
                print(piece, end="", flush=True)
            print(flush=True)
        except (HoVLEError, FileNotFoundError) as e:
            session.say(f"error: {e}")
