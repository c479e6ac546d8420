"""``mrnn serve``: a trained checkpoint behind a small web page and a JSON API (FastAPI).

Endpoints (every error is ``{"error": "one line"}`` with a 4xx or 5xx status):

- ``GET /``: the page (self-contained: no script, style or font from elsewhere).
- ``GET /api/info``: the checkpoint, decoding settings, gallery size and request limits.
- ``POST /api/caption``: a multipart upload ``image`` -> ``{"captions": [{"text",
  "log_prob"}]}``, beam search, best first.
- ``POST /api/search``: ``{"sentence": "...", "top": 10}`` -> ``{"results": [{"rank",
  "index", "name", "label", "score", "thumbnail"}], "unknown_words"}`` (``label``: the name
  without the folder every gallery name shares), the gallery ranked by
  P(sentence | image).
- ``GET /api/gallery/{index}/thumbnail``: a PNG thumbnail of a gallery image.

Gallery images are named relative to the gallery folder, never by the server's own paths.
The model is loaded and compiled once, before the first request; requests are bounded
(:class:`Limits`) and run the model one at a time behind a lock, so that any number of
concurrent clients is safe. Uploads are decoded under a memory budget shared by all requests
(``Limits.decode_memory_bytes``): each image's decoded size is estimated from its header and
admitted before decoding, a large image is downscaled while it is decoded, and an upload that
finds the budget full waits a little, then gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import io
import math
import os
import shutil
import socket
import tempfile
import threading
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrnn_jax import api
from mrnn_jax.captioner import Captioner
from mrnn_jax.errors import MrnnError
from mrnn_jax.images import to_rgb
from mrnn_jax.limits import Limits

THUMBNAIL_SIDE = 128

#: Uploads above this many pixels are downscaled while decoded (JPEG draft, then PIL's
#: box-filter ``reduce``) to at least twice the model's input side before the usual resize;
#: smaller ones are read exactly as ``mrnn caption`` reads the file.
REDUCE_ABOVE_PIXELS = 16_000_000

#: Seconds a client is told to wait (``Retry-After``) when the decode budget is full.
RETRY_AFTER_SECONDS = 2


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``."""

    sentence: str
    top: int = 10


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes (an upload of ``upload_limit``
    bytes and its multipart framing) is answered 413, whether its length is announced or
    it arrives in chunks."""

    def __init__(self, app, limit: int, upload_limit: int):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse(
            {"error": f"upload larger than the limit of {self.upload_limit / 2**20:g} MiB"}, 413
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        received = 0
        exceeded = started = False

        async def limited_receive():
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.limit:
                exceeded = True
                raise _BodyTooLarge
            return event

        async def tracked_send(event):
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a cut body (e.g. "error parsing the body"): 413
            started = started or event["type"] == "http.response.start"
            await send(event)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, tracked_send)
        if exceeded and not started:
            await too_large(scope, receive, send)


class _DecodeBudget:
    """Bytes of decoded images that may be in memory at once, shared by all requests."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._changed = threading.Condition()

    def acquire(self, amount: int, timeout: float) -> bool:
        """Takes ``amount`` bytes, waiting up to ``timeout`` seconds for room; False if
        there was none."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.used + amount <= self.total, timeout):
                return False
            self.used += amount
            return True

    def release(self, amount: int) -> None:
        """Gives back ``amount`` bytes taken by :meth:`acquire`."""
        with self._changed:
            self.used -= amount
            self._changed.notify_all()


#: What ``mrnn serve`` captions uploads with unless told otherwise.
DECODING = {"strategy": "beam", "beam_size": 3, "num_return": 3}


def create_app(
    model: Captioner,
    gallery: api.Gallery | None = None,
    limits: Limits | None = None,
    gallery_root: str | os.PathLike | None = None,
    **decoding: Any,
) -> FastAPI:
    """The FastAPI application serving ``model`` (and searching ``gallery``, if given).

    Gallery images are named in answers relative to ``gallery_root`` (the gallery's folder),
    or without the folder all their names share when it is not given.

    Uploaded images are captioned with ``decoding`` (any :class:`~mrnn_jax.decode.DecodeOptions`
    field; by default :data:`DECODING`, a beam of 3 returning all three). Compiles the
    captioning and search programs before returning, so that the first request is as fast
    as the others. ``limits`` default to :class:`~mrnn_jax.limits.Limits`' own.
    """
    limits = limits or Limits()
    if gallery is not None and len(gallery) > limits.max_gallery_images:
        raise MrnnError(
            f"the gallery has {len(gallery)} images, more than the limit of "
            f"{limits.max_gallery_images}"
        )
    decoding = {**DECODING, **{k: v for k, v in decoding.items() if v is not None}}
    options = api.decode_options(model, **decoding)  # bad settings fail here, not later
    decoding = dataclasses.asdict(options)
    lock = threading.Lock()
    budget = _DecodeBudget(limits.decode_memory_bytes)
    thumbnails: dict[int, bytes] = {}
    labels = _short_names(gallery.names) if gallery is not None else []
    names = _public_names(gallery.names, gallery_root) if gallery is not None else []

    # Compile once, before serving: a caption of a blank image, a search of one word.
    size = _input_side(model) if model.reads_image_files else 0
    if model.reads_image_files:
        api.caption(model, np.zeros((1, size, size, 3), np.uint8), **decoding)
    if gallery is not None:
        api.search(model, "a", gallery)

    app = FastAPI(title="mrnn-jax", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        _BodyLimit,
        limit=limits.max_upload_bytes + 64 * 1024,
        upload_limit=limits.max_upload_bytes,
    )

    app.state.decode_budget = budget

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own and routing's 404, 405
    async def _http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(
            {"error": _one_line(str(error.detail))}, error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def _server_error(request: Request, error: Exception):
        return JSONResponse({"error": f"internal error ({type(error).__name__})"}, 500)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, error: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in error.errors()
        )
        return JSONResponse({"error": f"bad request ({problems})"}, 422)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/info")
    def info() -> dict:
        return {
            "step": model.step,
            "vocabulary": len(model.vocab),
            "captions_images": model.reads_image_files,
            "decoding": decoding,
            "gallery_images": 0 if gallery is None else len(gallery),
            "limits": dataclasses.asdict(limits),
        }

    @app.post("/api/caption")
    def caption(image: Annotated[UploadFile, File()]) -> dict:
        name = os.path.basename(image.filename or "upload")
        if not model.reads_image_files:
            raise HTTPException(400, _one_line(_model_error(model)))
        upload = image.file
        upload.seek(0, os.SEEK_END)
        length = upload.tell()
        upload.seek(0)
        if not length:
            raise HTTPException(400, f"{name}: empty file (0 bytes)")
        if length > limits.max_upload_bytes:
            raise HTTPException(
                413, f"{name}: larger than the limit of {limits.max_upload_bytes / 2**20:g} MiB"
            )
        suffix = os.path.splitext(name)[1][:10]
        with tempfile.NamedTemporaryFile(suffix=suffix) as file:
            shutil.copyfileobj(upload, file)
            file.flush()
            try:
                pixels = _decode_upload(model, file.name, name, size, limits, budget)
            except MrnnError as error:
                raise HTTPException(415, str(error).replace(file.name, name)) from None
        with lock:
            results = api.caption(model, pixels, **decoding)[0]
        return {
            "name": name,
            "captions": [{"text": c.text, "log_prob": c.log_prob} for c in results],
        }

    @app.post("/api/search")
    def search(request: SearchRequest) -> dict:
        if gallery is None:
            raise HTTPException(
                404, "no gallery to search: start mrnn serve with --gallery or --features"
            )
        sentence = request.sentence.strip()
        if len(sentence) > limits.max_query_chars:
            raise HTTPException(
                413,
                f"the sentence has {len(sentence)} characters, more than the limit of "
                f"{limits.max_query_chars}",
            )
        if not 1 <= request.top <= limits.max_results:
            raise HTTPException(400, f"top must be between 1 and {limits.max_results}")
        try:
            with lock:
                result = api.search(model, sentence, gallery, top=request.top)
        except MrnnError as error:
            raise HTTPException(400, str(error)) from None
        showable = gallery.paths is not None  # a features gallery has no pictures
        return {
            "sentence": sentence,
            "unknown_words": result.unknown_words,
            "results": [
                {
                    "rank": rank,
                    "index": m.index,
                    "name": names[m.index],
                    "label": labels[m.index],
                    "score": m.score,
                    "thumbnail": f"/api/gallery/{m.index}/thumbnail" if showable else None,
                }
                for rank, m in enumerate(result.matches, 1)
            ],
        }

    @app.get("/api/gallery/{index}/thumbnail")
    def thumbnail(index: int) -> Response:
        if gallery is None or not 0 <= index < len(gallery):
            raise HTTPException(404, f"no gallery image {index}")
        if gallery.paths is None:
            raise HTTPException(404, "a features gallery has no pictures")
        if index not in thumbnails:
            try:
                picture = _thumbnail_of_file(gallery.paths[index])
            except (OSError, ValueError) as error:  # changed on disk since the start
                reason = getattr(error, "strerror", None) or str(error)
                reason = reason.replace(gallery.paths[index], names[index])
                raise HTTPException(404, f"{names[index]}: unreadable ({reason})") from None
            buffer = io.BytesIO()
            picture.save(buffer, "PNG")
            thumbnails[index] = buffer.getvalue()
        return Response(thumbnails[index], media_type="image/png")

    return app


def _model_error(model: Captioner) -> str:
    """Why ``model`` cannot caption image files (the message its loader gives)."""
    try:
        model.load_images([])
    except MrnnError as error:
        return str(error)
    return ""


def _short_names(names: list[str]) -> list[str]:
    """Gallery names without the folder they all share (what the page shows)."""
    if len(names) < 2:
        return [os.path.basename(n) for n in names]
    try:
        root = os.path.commonpath(names)
    except ValueError:  # absolute and relative names mixed
        return list(names)
    return [os.path.relpath(n, root) if n != root else os.path.basename(n) for n in names]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _input_side(model: Captioner) -> int:
    """The side of the square images the model (or its feature extractor) reads."""
    if model.extractor is not None:
        return model.extractor.image_size
    return int(model.config.encoder.image_size)


def _crop_fraction(model: Captioner) -> float:
    """The share of the shorter side the model's center crop keeps (1.0 for a squash)."""
    if model.extractor is not None:
        return float(model.extractor.encoder_config.get("crop_fraction") or 1.0)
    return float(model.config.encoder.get("crop_fraction") or 1.0)


def _public_names(names: list[str], root: str | os.PathLike | None) -> list[str]:
    """Gallery names relative to ``root`` (or, without one, relative names as they are and
    absolute ones relative to the folder they share), so that no answer carries the server's
    own paths."""
    if root is None:
        return _short_names(names) if any(os.path.isabs(n) for n in names) else list(names)
    root = os.path.abspath(root)
    public = []
    for name in names:
        relative = os.path.relpath(os.path.abspath(name), root)
        public.append(os.path.basename(name) if relative.startswith("..") else relative)
    return public


#: Bytes per pixel PIL keeps in memory for an image of each mode (RGB is stored as 4).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Modes PIL's ``reduce`` does not take: converted at full size first.
_UNREDUCIBLE = frozenset({"1", "P", "I;16", "I;16B", "I;16L", "I;16N"})
#: What reading a file exactly as ``mrnn caption`` does may take at full size; above this an
#: upload is downscaled while decoded.
EXACT_DECODE_BYTES = 128 * 2**20
_TRIM_ABOVE_BYTES = 16 * 2**20


def _conversion_bytes(mode: str, transparent: bool) -> int:
    """Bytes per pixel that turning an image of ``mode`` upright and into RGB may add."""
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or transparent:
        return 20  # RGBA, a white background, the composite, the RGB result
    if mode in ("I", "F") or mode.startswith("I;16"):
        return 32  # float64 working arrays
    return 4 if mode == "RGB" else 8  # an EXIF rotation's copy (and the RGB conversion)


def _decode_plan(image: Image.Image, target: int) -> tuple[int, int]:
    """The box-filter reduction factor for an opened (not yet decoded) image, 1 to read it
    exactly, and the memory that decoding it that way is estimated to take."""
    width, height = image.size
    stored = _STORED_BYTES.get(image.mode, 4)
    transparent = "transparency" in image.info
    exact = width * height * (stored + _conversion_bytes(image.mode, transparent)) + 2**20
    factor = min(width, height) // target
    if exact <= EXACT_DECODE_BYTES or factor < 2:
        return 1, exact
    if image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 of the size straight away
        image.draft(None, (target, target))
        width, height = image.size
        stored = _STORED_BYTES.get(image.mode, 4)
        factor = max(1, min(width, height) // target)
    converted = 4 if image.mode in _UNREDUCIBLE or transparent else 0
    reduced = (width // factor + 1) * (height // factor + 1)
    return factor, width * height * (stored + converted) + reduced * 40 + 2**20


_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _reduced_rgb(image: Image.Image, factor: int) -> Image.Image:
    """An opened image decoded, reduced ``factor`` times (box filter), turned upright and
    converted to RGB; the full-size pixels are freed as soon as they are reduced."""
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # malformed EXIF: used as stored, as mrnn caption does
        orientation = None
    image.load()
    full = image
    if full.mode in _UNREDUCIBLE or "transparency" in full.info:
        full = full.convert(
            "RGBA" if full.mode in ("P", "L", "RGB") else "L" if full.mode == "1" else "I"
        )
    reduced = full.reduce(factor)
    del full
    image.im = None  # the decoded pixels, freed now rather than when the request ends
    if orientation in _ORIENTATIONS:
        reduced = reduced.transpose(_ORIENTATIONS[orientation])
    return to_rgb(reduced)


def _decode_upload(
    model: Captioner, path: str, name: str, side: int, limits: Limits, budget: _DecodeBudget
) -> np.ndarray:
    """The model's pixels for the uploaded file ``path`` (named ``name`` in messages),
    decoded within ``budget``: 413 for an image too large ever to decode, 503 when the
    budget stays full, 415 for a file that is not a readable image."""
    target = 2 * math.ceil(side / _crop_fraction(model))
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise HTTPException(
                    413,
                    f"{name}: {width} x {height} pixels ({width * height / 1e6:.1f} megapixels), "
                    f"more than the limit of {limits.max_image_pixels / 1e6:g} megapixels",
                )
            factor, cost = _decode_plan(image, target)
            if cost > budget.total:
                raise HTTPException(
                    413,
                    f"{name}: {width} x {height} pixels ({image.mode}) would take about "
                    f"{cost / 2**20:.0f} MiB to decode, more than the server's decoding memory "
                    f"of {budget.total / 2**20:g} MiB",
                )
            if not budget.acquire(cost, limits.decode_wait_seconds):
                raise HTTPException(
                    503,
                    f"{name}: the server is decoding other uploads (its {budget.total / 2**20:g} "
                    f"MiB of decoding memory are in use); try again in a few seconds",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            try:
                if factor == 1:
                    image.close()
                    return model.load_images([path])
                try:
                    picture = _reduced_rgb(image, factor)
                except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
                    raise HTTPException(
                        415, f"{name}: truncated or corrupt image ({error})"
                    ) from None
                with tempfile.NamedTemporaryFile(suffix=".png") as reduced:
                    picture.save(reduced, "PNG", compress_level=0)
                    reduced.flush()
                    del picture
                    try:
                        return model.load_images([reduced.name])
                    except MrnnError as error:
                        raise MrnnError(str(error).replace(reduced.name, name)) from None
            finally:
                budget.release(cost)
                if cost >= _TRIM_ABOVE_BYTES:
                    _return_free_memory()
    except UnidentifiedImageError:
        raise HTTPException(
            415, f"{name}: not a readable image (unrecognised image format)"
        ) from None
    except Image.DecompressionBombError as error:
        raise HTTPException(413, f"{name}: image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise HTTPException(415, f"{name}: not a readable image ({error})") from None


def _return_free_memory() -> None:
    """Hands the memory malloc keeps after large frees back to the system (glibc's
    ``malloc_trim``; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _thumbnail_of_file(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))  # JPEG: decode smaller
        picture = to_rgb(ImageOps.exif_transpose(image))
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return picture


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (port 0: any free port), not yet listening;
    an address that cannot be bound (a busy port, an unknown host) is a one-line
    :class:`MrnnError`."""
    try:
        family, kind, _, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind)
    except OSError as error:
        raise MrnnError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(where)
    except OSError as error:
        sock.close()
        reason = (error.strerror or str(error)).lower()
        raise MrnnError(f"cannot listen on {host}:{port} ({reason})") from None
    return sock


def address(sock: socket.socket) -> str:
    """The URL of the page served on the bound socket ``sock``."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8000, sock: socket.socket | None = None
) -> None:
    """Serves ``app`` with uvicorn (one process) on ``sock`` (a socket from :func:`bind`),
    or on ``host``:``port``, until interrupted."""
    import uvicorn  # the serve extra; create_app alone does not need it

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", workers=1)
    uvicorn.Server(config).run(sockets=None if sock is None else [sock])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>m-RNN: caption and search</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
#drop { border: 2px dashed #999; border-radius: 8px; padding: 1.5rem; text-align: center; }
#drop.over { border-color: #2a6; background: #f3fbf6; }
#preview { max-height: 12rem; display: none; margin: .8rem auto 0; }
.error { color: #b00; white-space: pre-wrap; }
.lp, .score { color: #666; font-variant-numeric: tabular-nums; margin-left: .6rem; }
#results { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .8rem; }
#results li { width: 9rem; font-size: .85rem; word-break: break-all; }
.rank { color: #666; }
#results img { width: 128px; height: 128px; object-fit: cover; display: block; }
#info { color: #666; font-size: .85rem; }
</style></head>
<body>
<h1>m-RNN: describe an image, find images for a sentence</h1>
<p id="info">loading...</p>

<h2>Caption an image</h2>
<div id="drop">Drop an image here, or
  <input type="file" id="image-input" accept="image/*">
  <img id="preview" alt="the uploaded image">
</div>
<p id="caption-status"></p>
<p id="caption-error" class="error" role="alert"></p>
<ol id="captions"></ol>

<h2>Search the gallery</h2>
<form id="search-form">
  <input id="query" type="text" size="50" placeholder="a red circle above a blue square">
  <label>top <input id="top" type="number" min="1" value="10" style="width:4rem"></label>
  <button id="search-button" type="submit">Search</button>
</form>
<p id="search-status"></p>
<p id="search-error" class="error" role="alert"></p>
<ol id="results"></ol>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
async function call(url, options) {
  const response = await fetch(url, options);
  let body;
  try { body = await response.json(); } catch (e) { body = {error: response.statusText}; }
  if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
  return body;
}
function item(parts) {
  const li = document.createElement("li");
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls; span.textContent = text; li.appendChild(span);
  }
  return li;
}
async function caption(file) {
  $("captions").replaceChildren(); $("caption-error").textContent = "";
  $("captions").dataset.state = "busy"; $("caption-status").textContent = "captioning...";
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file); preview.style.display = "block";
  const form = new FormData(); form.append("image", file, file.name);
  try {
    const body = await call("/api/caption", {method: "POST", body: form});
    for (const c of body.captions) {
      const lp = "log p = " + c.log_prob.toFixed(3);
      $("captions").appendChild(item([["text", c.text], ["lp", lp]]));
    }
    $("caption-status").textContent = "";
  } catch (error) {
    preview.style.display = "none";
    $("caption-error").textContent = error.message; $("caption-status").textContent = "";
  }
  $("captions").dataset.state = "done";
}
$("image-input").addEventListener("change", (e) => {
  if (e.target.files[0]) caption(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) caption(e.dataTransfer.files[0]);
});
$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("results").replaceChildren(); $("search-error").textContent = "";
  $("results").dataset.state = "busy"; $("search-status").textContent = "searching...";
  try {
    const body = await call("/api/search", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sentence: $("query").value, top: Number($("top").value)})});
    for (const r of body.results) {
      const li = item([["rank", r.rank + ". "], ["name", r.label],
                       ["score", r.score.toFixed(3)]]);
      li.title = r.name;
      if (r.thumbnail) {
        const img = document.createElement("img");
        img.src = r.thumbnail; img.alt = r.name; li.prepend(img);
      }
      $("results").appendChild(li);
    }
    $("search-status").textContent = body.unknown_words.length
      ? "not in the vocabulary (read as <unk>): " + body.unknown_words.join(" ") : "";
  } catch (error) {
    $("search-error").textContent = error.message; $("search-status").textContent = "";
  }
  $("results").dataset.state = "done";
});
call("/api/info").then((info) => {
  $("info").textContent = "checkpoint step " + info.step + ", " + info.vocabulary +
    " words, beam " + info.decoding.beam_size + ", gallery of " + info.gallery_images +
    " images; uploads up to " + (info.limits.max_upload_bytes / 1048576) + " MiB and " +
    (info.limits.max_image_pixels / 1e6) + " megapixels";
  if (!info.captions_images) $("image-input").disabled = true;
  if (!info.gallery_images) $("search-button").disabled = true;
}).catch((error) => { $("info").textContent = error.message; });
</script>
</body></html>
"""

__all__ = ["Limits", "address", "bind", "create_app", "run"]
