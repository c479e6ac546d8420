"""Quiet commands: each line of the project once, in one format; no library chatter.

Every command runs as a user types it, in a fresh process, from a temporary folder with
relative paths, on one tiny run trained once for the module on a small Flickr8K-format
folder whose token file has what a real one has: captions of images in no split, a
duplicate caption and the odd key ``2258277193_586949ec62.jpg.1``. The assertions are on
exact output lines.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from mrnn_jax import logs
from mrnn_jax.data.records import DataReport
from tests import dataset_fixtures as fx
from tests.conftest import REPO, subprocess_env

TIME = r"\d\d:\d\d:\d\d "
# A line a library wrote: absl's or orbax's (as Python's logging or the project's library
# format prints it), TensorStore's, or a C++ log line (absl / XLA: "W0000 00:00:...").
LIBRARY_LINE = re.compile(
    r"absl|orbax|tensorstore|^(DEBUG|INFO|WARNING|ERROR|CRITICAL):|^[IWEF]\d{4} ", re.I
)
EARLY_STOP = re.compile(
    TIME + r"step 4: no better val/perplexity in 1 evaluations \(best \S+ at step 2\): "
    r"stopping early \(train\.patience\)"
)
NO_SPLIT = [fx.flickr8k_name(100), fx.flickr8k_name(101)]  # in the token file only
TRAIN = [
    "train", "--config", "tiny", "--workdir", "run", "--no-progress",
    "dataset.name=flickr8k", "dataset.data_dir=Flickr8k", "dataset.min_count=1",
    "eval.splits=test", "train.batch_size=10", "train.num_steps=40", "train.eval_every=2",
    "train.checkpoint_every=2", "train.patience=1", "train.learning_rate=1e-30",
]  # fmt: skip


def user_env() -> dict[str, str]:
    """The tests' child environment without the suite's own C++ log silencing: as a user's."""
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def run(folder: str, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGV`` in ``folder``, as a user types it there."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=user_env(),
        cwd=folder,
        timeout=timeout,
    )


def lines(text: str) -> list[str]:
    """The lines of a command's output (a progress bar's redraws count as lines)."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def library_lines(text: str) -> list[str]:
    """The lines of ``text`` a library wrote."""
    return [line for line in lines(text) if LIBRARY_LINE.search(line)]


def summary_lines(text: str) -> list[str]:
    """The dataset's skip-summary lines of ``text``, their time stripped."""
    return [line[9:] for line in lines(text) if re.match(TIME + "flickr8k: ", line)]


@pytest.fixture(scope="module")
def flickr8k_run(tmp_path_factory) -> Iterator[dict]:
    """A folder holding ``Flickr8k/`` (with its images) and ``run/``, trained by the real
    command with patience 1 and a learning rate too small to change a float32 weight (so it
    stops at its second evaluation); the training's output, and the summary lines that a
    reader should print once each."""
    folder = tmp_path_factory.mktemp("quiet")
    names = fx.write_flickr8k(str(folder / "Flickr8k"), per_split=4, images=True)
    token_file = folder / "Flickr8k" / "Flickr8k.token.txt"
    with open(token_file, encoding="utf-8") as f:
        count = len(f.read().splitlines())
    extra = [f"{name}#0\tA dog in no split ." for name in NO_SPLIT]
    extra.append(f"{names['train'][0]}#5\t{fx.captions_for(0)[0]}")  # its first caption again
    with open(token_file, "a", encoding="utf-8") as f:
        f.write("\n".join(extra) + "\n")
    odd = "2258277193_586949ec62.jpg.1"
    where = "Flickr8k/Flickr8k.token.txt"
    summary = [
        f"flickr8k: 7 captions of images in no split (skipped) (e.g. {odd}, "
        f"{NO_SPLIT[0]}, {NO_SPLIT[1]})",
        f"flickr8k: 1 duplicate captions of an image (skipped) (e.g. {where}:{count + 3})",
        f"flickr8k: 1 odd image keys in the token file (e.g. {where}:{count - 4} ({odd}))",
    ]
    trained = run(str(folder), "-m", "mrnn_jax", *TRAIN)
    assert trained.returncode == 0, trained.stderr[-3000:]
    yield {
        "folder": str(folder),
        "image": f"Flickr8k/Flicker8k_Dataset/{names['test'][0]}",
        "trained": trained,
        "summary": summary,
    }


def test_training_says_once_that_it_stops_early(flickr8k_run):
    trained = flickr8k_run["trained"]
    output = trained.stdout + trained.stderr
    said = [line for line in lines(output) if "stopping early" in line]
    assert len(said) == 1 and EARLY_STOP.fullmatch(said[0]), said
    assert library_lines(output) == []
    assert summary_lines(trained.stderr) == flickr8k_run["summary"]


@pytest.mark.parametrize(
    "command",
    [
        [os.path.join(REPO, "experiments", "run_captioning.py"), "--split", "test", "--beam", "3"],
        ["-m", "mrnn_jax", "evaluate", "--split", "test", "--beam", "3", "--rerank", "consensus"],
        ["-m", "mrnn_jax", "retrieve", "--split", "test"],
    ],
    ids=["run_captioning", "evaluate", "retrieve"],
)
def test_readers_print_no_library_line_and_each_summary_line_once(flickr8k_run, command):
    done = run(flickr8k_run["folder"], *command, "--checkpoint", "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert library_lines(done.stdout + done.stderr) == []
    assert summary_lines(done.stderr) == flickr8k_run["summary"]
    assert summary_lines(done.stdout) == []


def test_caption_prints_its_captions_and_nothing_else(flickr8k_run):
    image = flickr8k_run["image"]
    done = run(flickr8k_run["folder"], "-m", "mrnn_jax", "caption", "--checkpoint", "run", image)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    assert re.fullmatch(re.escape(image) + r"\t[a-z ]+\t\(log p = -\d+\.\d{3}\)\n", done.stdout)


def test_verbose_brings_the_libraries_lines_back(flickr8k_run):
    image = flickr8k_run["image"]
    argv = ["-m", "mrnn_jax", "caption", "--checkpoint", "run", image, "-v"]
    done = run(flickr8k_run["folder"], *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    absl = [line for line in lines(done.stderr) if re.match(TIME + r"(INFO|WARNING) absl: ", line)]
    assert any(line.endswith("_CHECKPOINT_METADATA") for line in absl), done.stderr[-3000:]
    assert any("Restoring checkpoint from" in line for line in absl), done.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_with_its_address_line_alone(flickr8k_run):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mrnn_jax", "serve", "--checkpoint", "run", "--port", str(port)],
        cwd=flickr8k_run["folder"],
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    said = []
    try:
        for line in process.stdout:  # until the address line (or the process ends)
            said.append(line.rstrip("\n"))
            if line.startswith("mrnn serve: "):
                break
        # Answered before it is stopped: a signal then meets the server's own handlers.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=60) as answer:
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert said == [f"mrnn serve: http://127.0.0.1:{port}/"]


def test_a_library_error_still_shows_and_its_chatter_does_not(tmp_path):
    code = (
        "import logging\n"
        "from absl import logging as absl_logging\n"
        "from mrnn_jax import logs\n"
        "absl_logging.warning('orbax chatter before the setup')\n"  # absl's basicConfig
        "logs.setup()\n"
        "absl_logging.warning('orbax chatter')\n"
        "absl_logging.error('a real absl error')\n"
        "logging.getLogger('orbax').error('a real orbax error')\n"
        "logging.getLogger('mrnn_jax').info('our own line')\n"
    )
    done = run(str(tmp_path), "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = [re.sub("^" + TIME, "", line) for line in lines(done.stderr)]
    assert shown == [
        "WARNING:absl:orbax chatter before the setup",
        "ERROR absl: a real absl error",
        "ERROR orbax: a real orbax error",
        "our own line",
    ]


@pytest.fixture
def project_log() -> Iterator[list[str]]:
    """The messages of the ``mrnn_jax`` logger, caught on the logger itself (a command run
    in this process may have stopped its propagation)."""
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    logger, handler = logging.getLogger(logs.PROJECT), Catch(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)


def test_a_dataset_summary_is_logged_once_per_dataset(tmp_path, project_log):
    report = DataReport()
    report.note("odd keys", "file:1")
    for _ in range(3):
        report.log("quiet-test", str(tmp_path / "a"))
    report.log("quiet-test", str(tmp_path / "b"))  # another copy of the dataset: said again
    report.note("odd keys", "file:2")  # new counts of the first: said
    report.log("quiet-test", str(tmp_path / "a"))
    assert project_log == [
        "quiet-test: 1 odd keys (e.g. file:1)",
        "quiet-test: 1 odd keys (e.g. file:1)",
        "quiet-test: 2 odd keys (e.g. file:1, file:2)",
    ]
