"""The generation engine: one thread owns the model and advances every running request together.

Requests wait in a bounded queue. Between decode steps the engine admits waiting requests (up to
``max_batch`` running): each is prefilled on its own, exactly as ``model.chat`` prefills it, and
its cache rows join the running batch. Every step then decodes one token for all running rows at
once. A request leaves the batch when it ends (end of turn, a stop string, its token budget), when
its client has gone (``cancel``), or at its deadline. Results flow back through ``Request.events``
as ``("text", str)``, ``("end", reason)`` or ``("error", exception)``, delivered with the
``emit`` callback the caller gives (for asyncio: ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ContextLengthError, HoVLEError
from ..generation import context_room, next_token
from ..model.layers import KVCache
from ..processing.tokenizer import StreamDecoder
from . import batch_cache


class QueueFullError(HoVLEError, RuntimeError):
    """The engine's queue holds as many requests as it may; the client should retry later."""


class DeadlineError(HoVLEError, TimeoutError):
    """A request that did not finish before its deadline."""


@dataclass
class Request:
    """One generation: prompt ids (and image tiles), its budget, sampling and stop strings."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None
    max_new_tokens: int
    emit: Callable[[tuple], None]  # receives every event, from the engine thread
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    deadline: float | None = None  # time.monotonic() value
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled in by the engine
    completion_tokens: int = 0
    max_tokens_clamped: bool = False

    def cancel(self) -> None:
        """Stop at the next step (the client has gone); no further events are sent."""
        self.cancelled.set()


class _Row:
    """A running request's decoding state."""

    def __init__(self, request: Request, end_ids: set[int], tokenizer):
        self.request = request
        self.end_ids = end_ids
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.generator = None
        if request.temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(request.seed if request.seed is not None else torch.seed())
        self.text = ""  # everything decoded so far
        self.sent = 0  # characters of ``text`` already emitted
        self.started = False  # leading whitespace is dropped, as chat does

    @property
    def remaining(self) -> int:
        return self.request.max_new_tokens - self.request.completion_tokens


class Engine:
    """Continuous batching over a ``HoVLEModel``; ``start`` runs the loop in a daemon thread."""

    def __init__(self, model, processor, max_batch: int = 8, max_queue: int = 64):
        self.model = model
        self.processor = processor
        self.max_batch = max_batch
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self.end_ids = {processor.end_of_turn_id}  # what ends an answer in chat, too
        self._rows: list[_Row] = []
        self.peak_running = 0  # the most requests decoded together so far
        self._caches: tuple[KVCache | None, KVCache | None] = (None, None)
        self._logits: torch.Tensor | None = None  # the running rows' next-token logits
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- control

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="hovle-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: Request) -> None:
        """Queue ``request``; ``QueueFullError`` when the queue is full."""
        request.max_new_tokens = max(0, int(request.max_new_tokens))
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            raise QueueFullError(
                f"the server is busy ({self.waiting.maxsize} requests waiting): retry later"
            ) from None

    @property
    def running(self) -> int:
        return len(self._rows)

    # ---------------------------------------------------------------- the loop

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                if not self._rows:
                    try:
                        request = self.waiting.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    self._admit(request)
                while len(self._rows) < self.max_batch:
                    try:
                        self._admit(self.waiting.get_nowait())
                    except queue.Empty:
                        break
                if self._rows:
                    try:
                        self._step()
                    except Exception as e:  # noqa: BLE001 - fail the running requests, keep serving
                        for row in self._rows:
                            row.request.emit(("error", e))
                        self._rows, self._caches, self._logits = [], (None, None), None

    def _admit(self, request: Request) -> None:
        """Prefill ``request`` alone and add its rows to the running batch."""
        if request.cancelled.is_set():
            return
        if request.deadline is not None and time.monotonic() > request.deadline:
            request.emit(("error", DeadlineError("the request's deadline passed while it waited in the queue")))
            return
        try:
            model = self.model
            ids = torch.tensor([request.input_ids], device=model.device)
            room = context_room(model.config, ids)
            if room < 1:
                raise ContextLengthError(f"the prompt ({len(request.input_ids)} tokens) leaves no room for an answer")
            request.max_tokens_clamped = request.max_new_tokens > room
            request.max_new_tokens = min(request.max_new_tokens, room)
            if request.max_new_tokens == 0:
                request.emit(("end", "length"))
                return
            pixel_values = request.pixel_values
            if pixel_values is not None:
                pixel_values = pixel_values.to(model.device, model.dtype)
            embedding_cache, llm_cache = KVCache(request.max_new_tokens), KVCache(request.max_new_tokens)
            embeds = model.embed(ids, pixel_values, None, embedding_cache)
            logits = model.language_model(embeds, None, llm_cache, last_only=True)[:, -1]
        except Exception as e:  # noqa: BLE001 - one request's failure must not stop the others
            request.emit(("error", e))
            return
        row = _Row(request, self.end_ids, self.processor.tokenizer)
        reserve = max([r.remaining for r in self._rows] + [row.remaining]) + 1
        self._caches = (
            batch_cache.join(self._caches[0], embedding_cache, reserve, self._limit(embedding=True)),
            batch_cache.join(self._caches[1], llm_cache, reserve, self._limit(embedding=False)),
        )
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])
        self._rows.append(row)
        self.peak_running = max(self.peak_running, len(self._rows))

    def _limit(self, embedding: bool) -> int:
        config = self.model.config
        return config.embedding.max_position_embeddings if embedding else config.llm.max_position_embeddings

    def _step(self) -> None:
        """Pick every row's next token, hand out text, drop finished rows, run one decode step."""
        tokens = []
        for i, row in enumerate(self._rows):
            r = row.request
            sample = r.temperature > 0
            token = next_token(self._logits[i : i + 1], sample, r.temperature if sample else 1.0,
                               r.top_p, 0, row.generator)
            tokens.append(int(token[0]))
        keep = []
        for i, (row, token) in enumerate(zip(self._rows, tokens)):
            if self._advance(row, token):
                keep.append(i)
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._caches = tuple(batch_cache.keep(c, keep) for c in self._caches)
            self._logits = self._logits[keep] if keep else None
            tokens = [tokens[i] for i in keep]
        if not self._rows:
            return
        reserve = max(r.remaining for r in self._rows) + 1
        self._caches = (
            batch_cache.make_room(self._caches[0], reserve, self._limit(embedding=True)),
            batch_cache.make_room(self._caches[1], reserve, self._limit(embedding=False)),
        )
        model = self.model
        step = torch.tensor(tokens, device=model.device)[:, None]
        embeds = model.embed(step, cache=self._caches[0])
        self._logits = model.language_model(embeds, cache=self._caches[1], last_only=True)[:, -1]

    def _advance(self, row: _Row, token: int) -> bool:
        """Take ``token`` for ``row``; False when the row is done (its last events are sent)."""
        r = row.request
        if r.cancelled.is_set():
            return False
        if r.deadline is not None and time.monotonic() > r.deadline:
            r.emit(("error", DeadlineError(f"the request ran past its deadline after {r.completion_tokens} tokens")))
            return False
        if token in row.end_ids:
            self._finish(row, "stop")
            return False
        r.completion_tokens += 1
        row.text += row.decoder.push(token)
        if self._emit_text(row, final=False):
            return False
        if row.remaining <= 0:
            row.text += row.decoder.flush()
            if not self._emit_text(row, final=True):
                r.emit(("end", "length"))
            return False
        return True

    def _finish(self, row: _Row, reason: str) -> None:
        row.text += row.decoder.flush()
        if not self._emit_text(row, final=True):
            row.request.emit(("end", reason))

    def _emit_text(self, row: _Row, final: bool) -> bool:
        """Send the text that can no longer change; True when a stop string ended the request.

        As in ``stream_chat``: leading whitespace is dropped and trailing whitespace held back until
        more text follows. Text that might still become a stop string is held back too.
        """
        text = row.text
        if not row.started:
            stripped = text.lstrip()
            row.sent += len(text) - len(stripped)
            row.started = bool(stripped)
        stops = [s for s in row.request.stop if s]
        for stop in stops:
            at = text.find(stop, row.sent)
            if at >= 0:
                piece = text[row.sent : at].rstrip()
                if piece:
                    row.request.emit(("text", piece))
                row.request.emit(("end", "stop"))
                return True
        end = len(text.rstrip())
        if not final:
            for stop in stops:  # hold back a tail that could still grow into a stop string
                for k in range(min(len(stop) - 1, end - row.sent), 0, -1):
                    if text[end - k : end] == stop[:k]:
                        end -= k
                        break
        if end > row.sent:
            row.request.emit(("text", text[row.sent : end]))
            row.sent = end
        return False
