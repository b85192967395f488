"""The HTTP side of ``hovle serve``: OpenAI's Chat Completions API over FastAPI.

Routes: ``POST /v1/chat/completions`` (plain or streamed over server-sent events),
``GET /v1/models``, ``GET /health``, and ``GET /`` the chat page (``static/chat.html``: plain
HTML and JavaScript that speaks the same API). Request parsing and image decoding run in worker threads,
generation in the engine's thread; the event loop only moves bytes. A client that goes away
cancels its request at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextLengthError
from .engine import DeadlineError, Engine, QueueFullError
from .engine import Request as EngineRequest
from .limits import ServeLimits
from .messages import APIError, image_tiles, parse_request, prompt_ids

DEFAULT_MAX_TOKENS = 512  # when a request names none, as `hovle chat` does
_POLL_S = 0.25  # how often a waiting handler checks that its client is still there


def _error(error: APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(model, processor, limits: ServeLimits | None = None, max_batch: int = 8,
               model_id: str | None = None) -> FastAPI:
    """The app; its engine starts with the app and stops with it."""
    limits = limits or ServeLimits()
    model_id = model_id or "hovle"
    engine = Engine(model, processor, max_batch=max_batch, max_queue=limits.max_queue)
    context = model.config.llm.max_position_embeddings

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="hovle", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(APIError(str(exc.detail), status=exc.status_code, kind=kind))

    page = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "running": engine.running, "waiting": engine.waiting.qsize(),
                "peak_running": engine.peak_running, "max_batch": engine.max_batch}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "hovle",
                                            "context_length": context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrived = time.monotonic()
        try:
            body = await _read_body(request, limits.max_body_bytes)
            chat = parse_request(body, limits)
            ids, pixel_values = await run_in_threadpool(_prepare, chat, processor, model.config, limits)
        except APIError as e:
            return _error(e)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        greedy = chat.temperature == 0
        job = EngineRequest(
            input_ids=ids, pixel_values=pixel_values,
            max_new_tokens=chat.max_tokens or DEFAULT_MAX_TOKENS,
            emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
            temperature=0.0 if greedy else chat.temperature, top_p=chat.top_p, seed=chat.seed, stop=chat.stop,
            deadline=arrived + limits.deadline_s,
        )
        try:
            engine.submit(job)
        except QueueFullError as e:
            return _error(APIError(str(e), status=503, kind="server_error", code="queue_full"), {"Retry-After": "1"})
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            return StreamingResponse(
                _stream(request, job, events, completion_id, created, model_id, chat.include_usage, len(ids)),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        pieces = []
        try:
            async for kind, value in _events(request, job, events):
                if kind == "text":
                    pieces.append(value)
                elif kind == "end":
                    return JSONResponse({
                        "id": completion_id, "object": "chat.completion", "created": created, "model": model_id,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                     "logprobs": None, "finish_reason": value}],
                        "usage": _usage(len(ids), job),
                    })
                else:
                    return _error(_as_api_error(value))
        finally:
            job.cancel()  # a no-op once it ended; stops it when the client left
        return _error(APIError("the client went away", status=499, code="client_closed"))

    return app


async def _read_body(request: Request, limit: int):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(f"the request body is {int(length):,} bytes; this server takes at most {limit:,}",
                       status=413, code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise APIError(f"the request body is larger than {limit:,} bytes", status=413, code="body_too_large")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(f"the request body is not JSON: {e}") from None


def _prepare(chat, processor, config, limits):
    pixel_values, tiles = image_tiles(chat.images, config, limits)
    return prompt_ids(processor, chat, tiles), pixel_values


async def _events(request: Request, job: EngineRequest, events: asyncio.Queue):
    """The engine's events for ``job``, until its end or error; stops early if the client leaves.

    The deadline is kept here too (the engine checks it between steps), so that a request never
    waits longer than its deadline whatever the engine is doing.
    """
    while True:
        try:
            event = await asyncio.wait_for(events.get(), _POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return
            if job.deadline is not None and time.monotonic() > job.deadline + _POLL_S:
                job.cancel()
                event = ("error", DeadlineError("the request ran past its deadline"))
            else:
                continue
        yield event
        if event[0] != "text":
            return


def _as_api_error(error: Exception) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, DeadlineError):
        return APIError(str(error), status=504, kind="timeout_error", code="deadline_exceeded")
    if isinstance(error, ContextLengthError):
        return APIError(str(error), param="messages", code="context_length_exceeded")
    return APIError(f"generation failed: {type(error).__name__}: {error}", status=500, kind="server_error")


def _usage(prompt_tokens: int, job: EngineRequest) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": job.completion_tokens,
             "total_tokens": prompt_tokens + job.completion_tokens}
    if job.max_tokens_clamped:
        # The answer could not have the length asked for: prompt + answer must fit the context.
        usage["max_completion_tokens_clamped_to"] = job.max_new_tokens
    return usage


async def _stream(request, job, events, completion_id, created, model_id, include_usage, prompt_tokens):
    def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish}]}
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for kind, value in _events(request, job, events):
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "end":
                yield chunk({}, finish=value)
                if include_usage:
                    yield chunk(None, usage=_usage(prompt_tokens, job))
                break
            else:
                yield f"data: {json.dumps(_as_api_error(value).body())}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def model_name(folder: str | Path) -> str:
    """The id the server gives a model folder: its name."""
    return Path(folder).resolve().name
