"""``mrnn serve``: a trained checkpoint behind a small web page and a JSON API (FastAPI).

Endpoints (every error is ``{"error": "one line"}`` with a 4xx status):

- ``GET /``: the page (self-contained: no script, style or font from elsewhere).
- ``GET /api/info``: the checkpoint, decoding settings, gallery size and request limits.
- ``POST /api/caption``: a multipart upload ``image`` -> ``{"captions": [{"text",
  "log_prob"}]}``, beam search, best first.
- ``POST /api/search``: ``{"sentence": "...", "top": 10}`` -> ``{"results": [{"rank",
  "index", "name", "label", "score", "thumbnail"}], "unknown_words"}`` (``label``: the name
  without the folder every gallery name shares), the gallery ranked by
  P(sentence | image).
- ``GET /api/gallery/{index}/thumbnail``: a PNG thumbnail of a gallery image.

The model is loaded and compiled once, before the first request; requests are bounded
(:class:`Limits`) and run the model one at a time behind a lock, so that any number of
concurrent clients is safe.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import threading
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel

from mrnn_jax import api
from mrnn_jax.captioner import Captioner
from mrnn_jax.errors import MrnnError
from mrnn_jax.images import to_rgb
from mrnn_jax.limits import Limits

THUMBNAIL_SIDE = 128


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``."""

    sentence: str
    top: int = 10


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes (an upload of ``upload_limit``
    bytes and its multipart framing) is answered 413, unread."""

    def __init__(self, app, limit: int, upload_limit: int):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"upload larger than the limit of {self.upload_limit / 2**20:g} MiB"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge
            return event

        async def tracked_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await JSONResponse({"error": message}, 413)(scope, receive, send)


#: What ``mrnn serve`` captions uploads with unless told otherwise.
DECODING = {"strategy": "beam", "beam_size": 3, "num_return": 3}


def create_app(
    model: Captioner,
    gallery: api.Gallery | None = None,
    limits: Limits | None = None,
    **decoding: Any,
) -> FastAPI:
    """The FastAPI application serving ``model`` (and searching ``gallery``, if given).

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
    thumbnails: dict[int, bytes] = {}
    labels = _short_names(gallery.names) if gallery is not None else []

    # Compile once, before serving: a caption of a blank image, a search of one word.
    if model.reads_image_files:
        size = (
            model.extractor.image_size
            if model.extractor is not None
            else int(model.config.encoder.image_size)
        )
        api.caption(model, np.zeros((1, size, size, 3), np.uint8), **decoding)
    if gallery is not None:
        api.search(model, "a", gallery)

    app = FastAPI(title="mrnn-jax", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        _BodyLimit,
        limit=limits.max_upload_bytes + 64 * 1024,
        upload_limit=limits.max_upload_bytes,
    )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException):
        return JSONResponse({"error": str(error.detail)}, error.status_code)

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
        data = image.file.read(limits.max_upload_bytes + 1)
        if not data:
            raise HTTPException(400, f"{name}: empty file (0 bytes)")
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(
                413, f"{name}: larger than the limit of {limits.max_upload_bytes / 2**20:g} MiB"
            )
        suffix = os.path.splitext(name)[1][:10]
        with tempfile.NamedTemporaryFile(suffix=suffix) as file:
            file.write(data)
            file.flush()
            _check_pixels(file.name, name, limits.max_image_pixels)
            try:  # decoded outside the lock, as mrnn caption decodes a file
                pixels = model.load_images([file.name])
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
                    "name": m.name,
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
                raise HTTPException(404, f"{gallery.paths[index]}: unreadable ({error})") from None
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


def _check_pixels(path: str, name: str, max_pixels: int) -> None:
    """Raises a 413 for an image above ``max_pixels`` and a 415 for a file that is not an
    image, reading only the header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise HTTPException(
            415, f"{name}: not a readable image (unrecognised image format)"
        ) from None
    except Image.DecompressionBombError as error:
        raise HTTPException(413, f"{name}: image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise HTTPException(415, f"{name}: not a readable image ({error})") from None
    if width * height > max_pixels:
        raise HTTPException(
            413,
            f"{name}: {width} x {height} pixels ({width * height / 1e6:.1f} megapixels), more "
            f"than the limit of {max_pixels / 1e6:g} megapixels",
        )


def _thumbnail_of_file(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))  # JPEG: decode smaller
        picture = to_rgb(ImageOps.exif_transpose(image))
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return picture


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serves ``app`` with uvicorn (one process) until interrupted."""
    import uvicorn  # the serve extra; create_app alone does not need it

    uvicorn.run(app, host=host, port=port, log_level="warning", workers=1)


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

__all__ = ["Limits", "create_app", "run"]
