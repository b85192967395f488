"""What one request may ask of the server; every limit has a flag of ``hovle serve``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 20 * 2**20  # a request body (JSON with base64 images)
    max_images: int = 8  # images in one request, all turns together
    max_image_pixels: int = 40_000_000  # width x height of one image, read from its header
    max_tiles: int = 48  # 448 px tiles of all images of a request together
    deadline_s: float = 300.0  # from arrival to the last token
    max_queue: int = 64  # requests waiting for a place in the running batch
    allowed_image_domains: tuple[str, ...] = ()  # hosts (and their subdomains) of fetchable image URLs
    remote_timeout_s: float = 10.0
    remote_max_bytes: int = 20 * 2**20
