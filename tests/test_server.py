"""``mrnn serve``: the JSON API in process (answers equal the library's, every bound a clear
error), then the real server in a browser (headless Chromium driven by Playwright: the page
shows what ``mrnn caption`` and ``mrnn search`` print; bad uploads give a message and the
server goes on), and 100 concurrent requests, all answered, with flat memory."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import time

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
    app = server.create_app(model, gallery, server.Limits(max_upload_bytes=2**20))
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
        (m.name, m.score) for m in expected.matches
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


# --- the real server, in a browser ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def live_server(files):
    """``mrnn serve`` in its own process on 127.0.0.1, until the module's tests are done."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mrnn_jax", "serve", "--checkpoint", CHECKPOINT,
            "--gallery", files["gallery"], "--port", str(port),
        ],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"mrnn serve exited: {process.stdout.read()[-3000:]}")
            try:
                if httpx.get(url + "/api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("mrnn serve did not answer within 180 s")
            time.sleep(0.5)
        yield {"url": url, "pid": process.pid}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    assert labels == [os.path.relpath(n, files["gallery"]) for n in names]
    scores = [el.inner_text() for el in page.query_selector_all("#results li .score")]
    searched = run_mrnn(
        "search", "--checkpoint", CHECKPOINT, "--images", files["gallery"], "--top", "6",
        files["query"],
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-3000:]
    rows = [line.split("\t") for line in searched.stdout.splitlines()]
    assert names == [name for _, name in rows] and scores == [s.strip() for s, _ in rows]
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
