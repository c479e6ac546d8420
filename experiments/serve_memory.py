"""``mrnn serve``'s memory under a burst of large uploads: idle, peak and after, in MiB.

Starts ``mrnn serve`` on a checkpoint (by default the committed tiny one), captions one small
image to warm it up, records its resident memory (RSS), then sends concurrent uploads of one
large PNG made in memory (40 megapixels of a few flat shapes, about 100 KB on the wire, about
160 MB once decoded) while sampling the server's RSS, and again a few seconds after the last
answer. A measurement that prints numbers, not a test.

    python experiments/serve_memory.py                        # 8 uploads of 40 megapixels
    python experiments/serve_memory.py --uploads 16 --decode-memory-mb 200
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import subprocess
import sys
import threading
import time

import httpx
import psutil
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(REPO, "tests", "data", "tiny_checkpoint")
MIB = 2**20


def large_png(megapixels: float) -> bytes:
    """A square PNG of ``megapixels`` showing a few flat shapes (it compresses well)."""
    side = int((megapixels * 1e6) ** 0.5)
    image = Image.new("RGB", (side, side), (200, 220, 240))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        box = (side * i // 8, side * i // 9, side * (i + 2) // 8, side * (i + 3) // 9)
        colour = (40 * i % 256, 90, 160 - 20 * i)
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colour)
    del draw
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def start_server(checkpoint: str, port: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """``mrnn serve`` on ``port`` (0: a free one); returns the process and its address (the
    line it prints once it is listening)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mrnn_jax", "serve", "--checkpoint", checkpoint]
        + ["--port", str(port), *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
    )
    line = process.stdout.readline()
    if not line.startswith("mrnn serve: http://"):
        process.kill()
        sys.exit(f"mrnn serve did not start: {line!r}")
    url = line.split(": ", 1)[1].strip().rstrip("/")
    if port:  # an older mrnn serve printed its address before listening: wait for it
        for _ in range(600):
            try:
                httpx.get(url + "/api/info", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
    return process, url


def main() -> None:
    """Runs the measurement and prints idle / peak / after RSS in MiB."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=CHECKPOINT, help="run or checkpoint to serve")
    parser.add_argument("--uploads", type=int, default=8, help="concurrent uploads (8)")
    parser.add_argument("--megapixels", type=float, default=40, help="size of each (40)")
    parser.add_argument("--decode-memory-mb", type=float, help="passed to mrnn serve")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (0: any free)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before 'after' (3)")
    args = parser.parse_args()

    png = large_png(args.megapixels)
    extra = (
        [] if args.decode_memory_mb is None else ["--decode-memory-mb", str(args.decode_memory_mb)]
    )
    process, url = start_server(args.checkpoint, args.port, extra)
    server = psutil.Process(process.pid)
    try:
        with open(os.path.join(CHECKPOINT, "sample.png"), "rb") as f:
            sample = f.read()
        with httpx.Client(base_url=url, timeout=300) as http:
            warm = http.post("/api/caption", files={"image": ("sample.png", sample)})
            warm.raise_for_status()
        time.sleep(1.0)
        idle = server.memory_info().rss
        peak = idle
        sampling = True

        def sample_rss() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, server.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample_rss)
        sampler.start()

        def upload(i: int) -> tuple[int, str]:
            with httpx.Client(base_url=url, timeout=300) as http:
                response = http.post("/api/caption", files={"image": (f"big{i}.png", png)})
                return response.status_code, response.json().get("error", "")

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.uploads) as pool:
            answers = list(pool.map(upload, range(args.uploads)))
        seconds = time.perf_counter() - start
        time.sleep(args.settle)
        sampling = False
        sampler.join()
        after = server.memory_info().rss
    finally:
        process.terminate()
        process.wait(timeout=30)

    statuses = sorted(status for status, _ in answers)
    print(
        f"{args.uploads} concurrent uploads of a {args.megapixels:g}-megapixel PNG "
        f"({len(png) / 1024:.0f} KB each), answered in {seconds:.1f} s: "
        + ", ".join(f"{statuses.count(s)} x {s}" for s in sorted(set(statuses)))
    )
    for status, error in answers:
        if error:
            print(f"  {status}: {error}")
    print(f"server RSS, MiB: idle {idle / MIB:.0f}, peak {peak / MIB:.0f}, after {after / MIB:.0f}")


if __name__ == "__main__":
    main()
