"""OpenAI chat requests -> what the engine runs: validated settings, a prompt, image tiles.

Everything a client sends is checked here, before the engine sees it: the fields hovle supports,
the message order, and the images (data URLs; remote URLs only from the operator's allowed
domains; never files). Image sizes come from the header and the tile count from the grid rule,
so an oversized image is refused before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import torch

from ..errors import ContextLengthError, HoVLEError
from ..processing.images import ImageError, find_grid, header_size, image_to_pixel_values
from ..processing.prompts import IMAGE_PLACEHOLDER, PromptError
from .limits import ServeLimits


class APIError(HoVLEError):
    """A request the server refuses; rendered as OpenAI's ``{"error": {...}}`` with ``status``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


# Fields of the Chat Completions API that hovle accepts only at their neutral value.
_NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "tools": None, "tool_choice": None,
            "functions": None, "function_call": None}


@dataclass
class ChatRequest:
    """A validated request."""

    system: str | None
    history: list[tuple[str, str]]
    question: str
    images: list[bytes] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise APIError(f"{name} must be a number in [{low}, {high}], got {value!r}", param=name)
    return float(value)


def _integer(body: dict, name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise APIError(f"{name} must be an integer >= {low}, got {value!r}", param=name)
    return value


def parse_request(body, limits: ServeLimits) -> ChatRequest:
    """Check the request body and turn its messages into a conversation (images still encoded)."""
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object")
    for name, neutral in _NEUTRAL.items():
        if body.get(name, neutral) not in (neutral, None):
            raise APIError(f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise APIError("only text responses are supported", param="response_format", code="unsupported_parameter")
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise APIError("n must be 1: one answer per request", param="n", code="unsupported_parameter")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError("stop must be a string or a list of at most 4 non-empty strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError("stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError("stream_options must be an object", param="stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(f"seed must be an integer, got {seed!r}", param="seed")
    system, history, question, images = _conversation(body.get("messages"), limits)
    return ChatRequest(
        system=system, history=history, question=question, images=images, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0), top_p=_number(body, "top_p", 0.0, 1.0, 1.0),
        stop=stop, seed=seed, stream=stream, include_usage=bool(options.get("include_usage")),
    )


def _conversation(messages, limits: ServeLimits):
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list", param="messages")
    systems: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text)
    images: list[bytes] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            if turns:
                raise APIError(f"{where}: a system message must come before the conversation", param=where)
            systems.append(_text_only(message.get("content"), where))
        elif role == "user":
            text, sources = _user_content(message.get("content"), where)
            if len(images) + len(sources) > limits.max_images:
                raise APIError(f"more than {limits.max_images} images in one request", status=413, param=where,
                               code="too_many_images")
            images += [_image_bytes(source, f"{where}.content", limits) for source in sources]
            turns.append(("user", text))
        elif role == "assistant":
            turns.append(("assistant", _text_only(message.get("content"), where)))
        else:
            raise APIError(f"{where}: role must be system, user or assistant, got {role!r}", param=where)
    if not turns or turns[-1][0] != "user":
        raise APIError("the last message must come from the user", param="messages")
    history = []
    expected = "user"
    for role, _ in turns:
        if role != expected:
            raise APIError("user and assistant messages must alternate, starting with the user", param="messages")
        expected = "assistant" if role == "user" else "user"
    for k in range(0, len(turns) - 1, 2):
        history.append((turns[k][1], turns[k + 1][1]))
    return ("\n".join(systems) if systems else None), history, turns[-1][1], images


def _text_only(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(_part_text(p, where) for p in content)
    raise APIError(f"{where}.content must be a string or a list of text parts", param=where)


def _part_text(part: dict, where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise APIError(f"{where}: a text part needs a 'text' string", param=where)
    return text


def _user_content(content, where: str) -> tuple[str, list[str]]:
    """The user turn's text, with ``<image>`` where each image part stands, and its image URLs."""
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content:
        parts = content
    else:
        raise APIError(f"{where}.content must be a string or a non-empty list of parts", param=where)
    texts, sources = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = _part_text(part, where)
            if IMAGE_PLACEHOLDER in text:
                raise APIError(f"{where}: the text contains {IMAGE_PLACEHOLDER}; send images as image_url parts",
                               param=where)
            texts.append(text)
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise APIError(f"{where}: an image_url part needs image_url.url", param=where)
            sources.append(url)
            texts.append(IMAGE_PLACEHOLDER)
        else:
            raise APIError(f"{where}: parts are text or image_url, got {kind!r}", param=where)
    # Each image and each text part on a line of its own ("<image>\nquestion", as the released chat
    # writes an image question).
    out = ""
    for piece in texts:
        if out and not out.endswith("\n"):
            out += "\n"
        out += IMAGE_PLACEHOLDER + "\n" if piece == IMAGE_PLACEHOLDER else piece
    return out, sources


def _image_bytes(url: str, where: str, limits: ServeLimits) -> bytes:
    """The encoded image of a data URL, or of an allowed http(s) URL; never a file."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64"):
            raise APIError(f"{where}: a data URL must be base64 (data:image/...;base64,...)", status=422, param=where,
                           code="unreadable_image")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(f"{where}: the data URL is not valid base64", status=422, param=where,
                           code="unreadable_image") from None
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(url, where, limits)
    raise APIError(f"{where}: image URLs must be data: URLs{' or allowed http(s) URLs' if limits.allowed_image_domains else ''}; "
                   f"{scheme or 'local'} sources are refused", param=where, code="image_url_refused")


def _fetch(url: str, where: str, limits: ServeLimits) -> bytes:
    host = (urlsplit(url).hostname or "").lower()
    allowed = any(host == d or host.endswith("." + d) for d in limits.allowed_image_domains)
    if not allowed:
        raise APIError(f"{where}: remote image URLs are not fetched from {host or 'this host'} (the operator can "
                       f"allow domains with --allow-image-domain)", param=where, code="image_url_refused")
    import httpx

    try:
        with httpx.stream("GET", url, timeout=limits.remote_timeout_s, follow_redirects=False) as response:
            if response.status_code != 200:
                raise APIError(f"{where}: fetching the image gave HTTP {response.status_code}", status=422,
                               param=where, code="unreadable_image")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limits.remote_max_bytes:
                    raise APIError(f"{where}: the remote image is larger than {limits.remote_max_bytes:,} bytes",
                                   status=413, param=where, code="image_too_large")
            return bytes(data)
    except httpx.HTTPError as e:
        raise APIError(f"{where}: cannot fetch the image ({type(e).__name__}: {e})", status=422, param=where,
                       code="unreadable_image") from None


def image_tiles(images: list[bytes], config, limits: ServeLimits) -> tuple[torch.Tensor | None, list[int]]:
    """Tile every image, refusing (before decoding) one over the pixel limit, and a request over
    the tile limit."""
    counts = []
    for i, data in enumerate(images):
        size = header_size(data)
        if size is None:
            raise APIError(f"image {i + 1} is not an image hovle can read", status=422, code="unreadable_image")
        width, height = size
        if width * height > limits.max_image_pixels:
            raise APIError(f"image {i + 1} is {width}x{height} = {width * height:,} pixels; this server takes at most "
                           f"{limits.max_image_pixels:,}", status=413, code="image_too_large")
        counts.append(_tile_count(width, height, config))
    if sum(counts) > limits.max_tiles:
        raise APIError(f"the images make {sum(counts)} tiles; this server takes at most {limits.max_tiles} per request",
                       status=413, code="too_many_tiles")
    tensors = []
    for i, data in enumerate(images):
        try:
            tensors.append(image_to_pixel_values(
                io.BytesIO(data), min_num=config.min_dynamic_patch, max_num=config.max_dynamic_patch,
                image_size=config.embedding.image_size, use_thumbnail=config.use_thumbnail,
                dynamic=config.dynamic_image_size,
            ))
        except ImageError as e:
            raise APIError(f"image {i + 1}: {e}", status=422, code="unreadable_image") from None
    if not tensors:
        return None, []
    return torch.cat(tensors), [t.shape[0] for t in tensors]


def _tile_count(width: int, height: int, config) -> int:
    if not config.dynamic_image_size:
        return 1
    cols, rows = find_grid(width, height, config.min_dynamic_patch, config.max_dynamic_patch,
                           config.embedding.image_size)
    tiles = cols * rows
    return tiles + 1 if config.use_thumbnail and tiles > 1 else tiles


def prompt_ids(processor, request: ChatRequest, tiles: list[int]) -> list[int]:
    """The encoded prompt; a prompt error or one longer than the context is a 400."""
    try:
        prompt = processor.render_prompt(request.question, request.history, tiles, request.system)
        return processor.encode_prompt(prompt)
    except PromptError as e:
        raise APIError(str(e), param="messages") from None
    except ContextLengthError as e:
        raise APIError(str(e), param="messages", code="context_length_exceeded") from None
