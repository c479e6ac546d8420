"""What one request to ``mrnn serve`` may ask (kept apart from the server, so that the
command line can show the defaults without importing FastAPI)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server.

    Attributes:
      max_upload_bytes: largest uploaded file.
      max_image_pixels: largest uploaded image, width x height (checked before decoding).
      max_query_chars: longest search sentence, in characters.
      max_results: most gallery images one search returns.
      max_gallery_images: most images the gallery may hold (checked at start-up).
      decode_memory_bytes: memory that the uploads being decoded at one time may take
        together (estimated from each image's header before decoding); an upload that finds
        it full waits up to ``decode_wait_seconds``, then is answered 503.
      decode_wait_seconds: how long an upload waits for room in ``decode_memory_bytes``.
    """

    max_upload_bytes: int = 20 * 2**20
    max_image_pixels: int = 40_000_000
    max_query_chars: int = 500
    max_results: int = 100
    max_gallery_images: int = 10_000
    decode_memory_bytes: int = 400 * 2**20
    decode_wait_seconds: float = 10.0
