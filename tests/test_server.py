"""``mrnn serve``: the JSON API in process (answers equal the library's, every bound a clear
error), then the real server in a browser (headless Chromium driven by Playwright: the page
shows what ``mrnn caption`` and ``mrnn search`` print; bad uploads give a message and the
server goes on), and 100 concurrent requests, all answered, with flat memory."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mrnn_jax import api, server
from mrnn_jax.errors import MrnnError
from tests.conftest import REPO, run_mrnn, subprocess_env, write_scenes

CHECKPOINT = os.path.join(REPO, "tests", "data", "tiny_checkpoint")
SAMPLE = os.path.join(CHECKPOINT, "sample.png")
CHROMIUM = os.environ.get("MRNN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A gallery of shapes scenes, the scene captions, and the bad uploads."""
    root = tmp_path_factory.mktemp("serve")
    gallery = root / "gallery"
    split, _ = write_scenes(gallery, 6, seed=3)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n")
    # 7072 x 7072 = 50.0 megapixels of one colour: a small PNG that is huge once decoded.
    Image.new("RGB", (7072, 7072), (40, 90, 160)).save(root / "huge.png", compress_level=1)
    return {
        "root": root,
        "gallery": str(gallery),
        "query": split.records[0].captions[0],
        "empty": str(root / "empty.png"),
        "text": str(root / "notes.txt"),
        "huge": str(root / "huge.png"),
    }


@pytest.fixture(scope="module")
def model():
    return api.load(CHECKPOINT)


@pytest.fixture(scope="module")
def client(model, files):
    gallery = api.load_gallery(model, folder=files["gallery"])
    app = server.create_app(
        model, gallery, server.Limits(max_upload_bytes=2**20), gallery_root=files["gallery"]
    )
    with TestClient(app) as client:
        yield client


def _upload(client, path: str, name: str | None = None):
    with open(path, "rb") as f:
        return client.post("/api/caption", files={"image": (name or os.path.basename(path), f)})


def test_the_api_answers_as_the_library_does(client, model, files):
    page = client.get("/")
    assert page.status_code == 200 and 'id="image-input"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained
    info = client.get("/api/info").json()
    assert info["step"] == model.step and info["gallery_images"] == 6
    answer = _upload(client, SAMPLE)
    assert answer.status_code == 200, answer.text
    expected = api.caption(model, [SAMPLE], strategy="beam", beam_size=3, num_return=3)[0]
    assert [(c["text"], c["log_prob"]) for c in answer.json()["captions"]] == [
        (c.text, c.log_prob) for c in expected
    ]
    found = client.post("/api/search", json={"sentence": files["query"], "top": 4}).json()
    gallery = api.load_gallery(model, folder=files["gallery"])
    expected = api.search(model, files["query"], gallery, top=4)
    assert [(r["name"], r["score"]) for r in found["results"]] == [
        (os.path.relpath(m.name, files["gallery"]), m.score) for m in expected.matches
    ]
    thumbnail = client.get(found["results"][0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"


def test_every_bound_is_a_clear_error_and_the_server_goes_on(client, files, tmp_path):
    cases = [
        (_upload(client, files["empty"]), 400, "empty.png: empty file (0 bytes)"),
        (_upload(client, files["text"]), 415, "notes.txt: not a readable image"),
        (
            _upload(client, files["huge"]),
            413,
            "(50.0 megapixels), more than the limit of 40 megapixels",
        ),
        (client.post("/api/caption"), 422, "bad request (image: Field required)"),
        (
            client.post("/api/search", json={"sentence": "a " * 300}),
            413,
            "more than the limit of 500",
        ),
        (client.post("/api/search", json={"sentence": " ?! "}), 400, "has no words"),
        (client.post("/api/search", json={"sentence": "a", "top": 0}), 400, "between 1 and 100"),
        (client.get("/api/gallery/99/thumbnail"), 404, "no gallery image 99"),
    ]
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), np.uint8)).save(big)
    cases.append((_upload(client, str(big)), 413, "limit of 1 MiB"))
    truncated = tmp_path / "cut.png"
    with open(SAMPLE, "rb") as f:
        truncated.write_bytes(f.read()[:300])
    cases.append((_upload(client, str(truncated)), 415, "cut.png: truncated or corrupt image"))
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["error"], response.json()
        assert "\n" not in response.json()["error"] and str(tmp_path) not in response.text
    assert _upload(client, SAMPLE).status_code == 200


def test_a_gallery_above_the_limit_is_refused(model, files):
    gallery = api.load_gallery(model, folder=files["gallery"])
    with pytest.raises(MrnnError, match="6 images, more than the limit of 5"):
        server.create_app(model, gallery, server.Limits(max_gallery_images=5))
    with pytest.raises(MrnnError, match="6 images, more than the limit of 5"):
        api.load_gallery(model, folder=files["gallery"], max_images=5)


# --- abuse: memory, sizes, error shapes, paths ---------------------------------------------

#: A decoding budget of 4 MiB: a 64 x 64 upload fits, a 1200 x 1200 one (about 12 MB) never.
TINY_BUDGET = server.Limits(
    max_upload_bytes=2**20, decode_memory_bytes=4 * 2**20, decode_wait_seconds=0
)


@pytest.fixture(scope="module")
def guarded(model, tmp_path_factory):
    """An app with a tiny decoding budget and its own gallery (a file of which the tests
    delete): its client, app and gallery folder."""
    folder = tmp_path_factory.mktemp("guarded") / "gallery"
    write_scenes(folder, 3, seed=5)
    gallery = api.load_gallery(model, folder=str(folder))
    app = server.create_app(model, gallery, TINY_BUDGET, gallery_root=str(folder))
    with TestClient(app) as client:
        yield {"client": client, "app": app, "folder": folder}


def test_a_full_decoding_budget_is_503_and_an_image_that_never_fits_413(guarded, tmp_path):
    client, budget = guarded["client"], guarded["app"].state.decode_budget
    assert budget.acquire(budget.total, 0)  # other uploads are being decoded
    try:
        busy = _upload(client, SAMPLE)
    finally:
        budget.release(budget.total)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2", busy.text
    assert "decoding memory" in busy.json()["error"] and "try again" in busy.json()["error"]
    assert _upload(client, SAMPLE).status_code == 200 and budget.used == 0

    large = tmp_path / "large.png"
    Image.new("RGB", (1200, 1200), (10, 200, 30)).save(large)
    refused = _upload(client, str(large))
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"].startswith("large.png: 1200 x 1200 pixels (RGB) would take")
    assert "more than the server's decoding memory of 4 MiB" in refused.json()["error"]
    assert budget.used == 0


def test_a_large_upload_is_reduced_while_decoded_and_turned_upright(guarded, monkeypatch):
    monkeypatch.setattr(server, "EXACT_DECODE_BYTES", 0)  # every upload takes the lean path
    rng = np.random.default_rng(1)
    stored = Image.fromarray(rng.integers(0, 255, (384, 512, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown rotated 90 degrees clockwise
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        factor, _ = server._decode_plan(image, 128)
        assert factor == 3
        reduced = server._reduced_rgb(image, factor)
    expected = stored.transpose(Image.Transpose.ROTATE_270).reduce(3)
    assert reduced.size == (128, 171) and np.array_equal(np.asarray(reduced), expected)
    answer = guarded["client"].post(
        "/api/caption", files={"image": ("side.png", buffer.getvalue())}
    )
    assert answer.status_code == 200 and len(answer.json()["captions"]) == 3, answer.text


def _png_header(width: int, height: int) -> bytes:
    """The start of an RGB PNG file, up to its (empty) pixel data: PIL opens it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")


def test_the_decoding_estimate_of_a_40_megapixel_png(monkeypatch):
    with Image.open(io.BytesIO(_png_header(8000, 5000))) as image:
        factor, cost = server._decode_plan(image, 128)
    # Decoded (4 bytes a pixel, as PIL keeps RGB), then reduced 39 times, never converted whole.
    assert factor == 39 and 8000 * 5000 * 4 < cost < 8000 * 5000 * 4.2
    assert cost * 2 <= server.Limits().decode_memory_bytes  # two at once in the default budget
    monkeypatch.setattr(server, "EXACT_DECODE_BYTES", 10**12)
    with Image.open(io.BytesIO(_png_header(8000, 5000))) as image:
        assert server._decode_plan(image, 128) == (1, 8000 * 5000 * 8 + 2**20)


def test_a_chunked_upload_over_the_limit_is_413(guarded):
    boundary = "mrnnboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()

    def chunks():  # no Content-Length: 3 MiB in 64 KiB pieces
        yield head
        for _ in range(48):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    answer = guarded["client"].post(
        "/api/caption",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json() == {"error": "upload larger than the limit of 1 MiB"}


def test_every_error_is_one_json_error(guarded):
    client = guarded["client"]
    cases = [
        (client.get("/api/nowhere"), 404, "Not Found"),
        (client.get("/api/caption"), 405, "Method Not Allowed"),
        (client.get("/api/gallery/x/thumbnail"), 422, "bad request (index: Input should be"),
        (client.post("/api/search", json={"sentence": "a", "top": "many"}), 422, "top: Input"),
        (client.post("/api/search", content=b"{not json"), 422, "bad request (body"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert list(response.json()) == ["error"] and message in response.json()["error"]


def _strings(value) -> list[str]:
    """Every string in a decoded JSON answer, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_no_answer_carries_the_servers_paths(guarded, client, files):
    folder = guarded["folder"]
    answers = [
        c.post("/api/search", json={"sentence": "a red circle", "top": 3})
        for c in (guarded["client"], client)
    ]
    names = [r["name"] for r in answers[0].json()["results"]]
    assert sorted(names) == ["scene0.png", "scene1.png", "scene2.png"]
    answers += [guarded["client"].get("/api/info"), _upload(guarded["client"], SAMPLE)]
    (folder / "scene1.png").unlink()  # deleted since the start
    index = answers[0].json()["results"][names.index("scene1.png")]["index"]
    gone = guarded["client"].get(f"/api/gallery/{index}/thumbnail")
    assert gone.status_code == 404
    assert gone.json()["error"] == "scene1.png: unreadable (No such file or directory)"
    answers.append(gone)
    for answer in answers:
        for text in _strings(answer.json()):
            assert str(folder.parent) not in text and files["gallery"] not in text, text
            assert text.startswith("/api/") or not os.path.isabs(text), text


def test_a_busy_port_is_one_line_and_exit_status_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MrnnError, match=f"cannot listen on 127.0.0.1:{port} "):
            server.bind("127.0.0.1", port)
        done = run_mrnn("serve", "--checkpoint", CHECKPOINT, "--port", str(port), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"mrnn: error: cannot listen on 127.0.0.1:{port} (address already in use)\n"
    )


# --- the real server, in a browser ---------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def live_server(files, tmp_path_factory):
    """``mrnn serve`` in its own process on 127.0.0.1 (any free port: the one the address
    line names), until the module's tests are done."""
    log = open(tmp_path_factory.mktemp("live") / "stderr.txt", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mrnn_jax", "serve", "--checkpoint", CHECKPOINT,
            "--gallery", files["gallery"], "--port", "0",
        ],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )  # fmt: skip
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # printed once it listens
            reading = pool.submit(process.stdout.readline)
            try:
                line = reading.result(timeout=180)
            except concurrent.futures.TimeoutError:
                line = "(nothing within 180 s)"
                process.kill()
        if not line.startswith("mrnn serve: http://127.0.0.1:"):
            process.kill()
            log.seek(0)
            pytest.fail(f"mrnn serve did not start: {line} {log.read()[-3000:]}")
        url = line.split(": ", 1)[1].strip().rstrip("/")
        first = httpx.get(url + "/api/info", timeout=60).status_code  # at once, no retry
        yield {"url": url, "pid": process.pid, "first": first}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_the_address_is_printed_once_the_server_listens(live_server):
    assert live_server["first"] == 200  # the first request, sent as soon as the line came


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system (Debian's ``chromium``), driven by Playwright."""
    if not os.path.isfile(CHROMIUM):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium package "
            "(apt-get install -y chromium) or MRNN_CHROMIUM=/path/to/chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright from PyPI: pip install playwright")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _caption_in_page(page, path: str) -> tuple[list[tuple[str, str]], str]:
    """Uploads ``path`` on the page; returns the captions shown (text, "log p = ...") and the
    error message shown."""
    page.set_input_files("#image-input", path)
    page.wait_for_selector("#captions[data-state=done]", state="attached", timeout=60_000)
    shown = [
        (li.query_selector(".text").inner_text(), li.query_selector(".lp").inner_text())
        for li in page.query_selector_all("#captions li")
    ]
    page.evaluate("document.getElementById('captions').dataset.state = ''")
    return shown, page.inner_text("#caption-error")


@pytest.mark.slow
def test_the_page_in_a_browser_shows_what_the_commands_print(live_server, browser, files):
    page = browser.new_page()
    page.goto(live_server["url"] + "/")
    assert page.title() == "m-RNN: caption and search"
    page.wait_for_function("document.getElementById('info').textContent.includes('gallery of 6')")

    # Uploading an image shows mrnn caption's beam-search captions for that file.
    shown, error = _caption_in_page(page, SAMPLE)
    printed = run_mrnn("caption", "--checkpoint", CHECKPOINT, "--beam", "3", "--top", "3", SAMPLE)
    assert printed.returncode == 0, printed.stderr[-3000:]
    expected = [
        (text, log_prob.strip("()"))
        for _, text, log_prob in (line.split("\t") for line in printed.stdout.splitlines())
    ]
    assert error == "" and shown == expected and len(shown) == 3

    # Dropping the file on the page does the same.
    with open(SAMPLE, "rb") as f:
        encoded = base64.b64encode(f.read()).decode("ascii")
    page.evaluate(
        """(data) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
          document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        encoded,
    )
    page.wait_for_selector("#captions[data-state=done]", state="attached", timeout=60_000)
    dropped = [
        (li.query_selector(".text").inner_text(), li.query_selector(".lp").inner_text())
        for li in page.query_selector_all("#captions li")
    ]
    assert dropped == expected

    # Typing a sentence shows mrnn search's ranking of the gallery, with thumbnails.
    page.fill("#query", files["query"])
    page.fill("#top", "6")
    page.click("#search-button")
    page.wait_for_selector("#results[data-state=done]", state="attached", timeout=60_000)
    names = [el.get_attribute("title") for el in page.query_selector_all("#results li")]
    labels = [el.inner_text() for el in page.query_selector_all("#results li .name")]
    assert labels == names  # relative to the gallery folder, as every answer names them
    scores = [el.inner_text() for el in page.query_selector_all("#results li .score")]
    searched = run_mrnn(
        "search", "--checkpoint", CHECKPOINT, "--images", files["gallery"], "--top", "6",
        files["query"],
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-3000:]
    rows = [line.split("\t") for line in searched.stdout.splitlines()]
    assert names == [os.path.relpath(name, files["gallery"]) for _, name in rows]
    assert scores == [s.strip() for s, _ in rows]
    assert len(names) == 6 and len(page.query_selector_all("#results img")) == 6
    page.wait_for_function(  # every thumbnail arrives and decodes
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)",
        timeout=30_000,
    )

    # Bad uploads each show a clear message, and the server goes on serving.
    for path, message in [
        (files["empty"], "empty.png: empty file (0 bytes)"),
        (files["text"], "notes.txt: not a readable image (unrecognised image format)"),
        (files["huge"], "huge.png: 7072 x 7072 pixels (50.0 megapixels), more than the limit"),
    ]:
        shown, error = _caption_in_page(page, path)
        assert message in error and shown == []
        shown, error = _caption_in_page(page, SAMPLE)
        assert shown == expected and error == ""
    page.close()


@pytest.mark.slow
def test_a_hundred_concurrent_requests_are_all_answered_with_flat_memory(live_server):
    url, pid = live_server["url"], live_server["pid"]
    with open(SAMPLE, "rb") as f:
        image = f.read()

    def request(i: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as http:
            if i % 2:
                response = http.post("/api/search", json={"sentence": f"a red circle {i}"})
            else:
                response = http.post("/api/caption", files={"image": (f"{i}.png", image)})
            return response.status_code

    def burst() -> list[int]:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            futures = [pool.submit(request, i) for i in range(100)]
            done, pending = concurrent.futures.wait(futures, timeout=300)
            assert not pending, f"{len(pending)} of 100 requests unanswered after 300 s"
            return [f.result() for f in done]

    assert burst() == [200] * 100  # the first burst also warms the server's pools and caches
    rss = [_rss_bytes(pid)]
    for _ in range(2):
        assert burst() == [200] * 100
        rss.append(_rss_bytes(pid))
    growth = max(rss) - rss[0]
    # Flat: two more bursts of 100 add less than 5% (and 30 MiB) to the resident memory.
    assert growth < min(0.05 * rss[0], 30 * 2**20), [r / 2**20 for r in rss]
