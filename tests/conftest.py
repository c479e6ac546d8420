"""Shared fixtures: running the ``mrnn`` command in a fresh process, tiny training runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mrnn_jax import compilation_cache
from mrnn_jax.data import shapes
from mrnn_jax.data.shapes import ShapesSplit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Keras (the VGG-16 reference) runs on JAX in every test process, whichever test module
# imports it first: TensorFlow is installed too (for the TFDS builders) and would be its
# default backend.
os.environ.setdefault("KERAS_BACKEND", "jax")
# XLA's CPU backend at optimisation level 0: the tests' programs are small and compiling them
# is most of the suite's time; level 0 compiles them about a third faster and computes the
# same functions (users' runs, the benchmarks and `make train` keep XLA's default level).
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()
# One persistent compilation cache for the whole suite: both pytest workers and every `mrnn`
# process the tests start load the programs another one compiled (the tiny config's
# programs are the same in dozens of tests). Tests that kill a process while it may be
# writing an entry give it a cache of its own (`private_compilation_cache`).
SHARED_COMPILATION_CACHE = os.path.join(REPO, ".cache", "xla-tests")
os.environ.setdefault("MRNN_COMPILATION_CACHE", SHARED_COMPILATION_CACHE)
compilation_cache.enable()


# Overrides for tests that run a real dataset's config but do not test METEOR: its Java
# process takes about 10 s to start, once per evaluation (tests/test_caption_metrics.py and
# one paper row run it for real).
NO_METEOR = "eval.metrics=BLEU,ROUGE_L,CIDEr"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: quiet, CPU-only, with the repo importable."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if "XLA_FLAGS" in extra:  # a test's own flags (device counts) join the suite's
        extra = {**extra, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()}
    env.update(extra)
    return env


def write_scenes(folder, count: int, seed: int) -> tuple[ShapesSplit, list[str]]:
    """``count`` 64x64 shapes test scenes saved as ``folder/scene{i}.png`` (the folder is made
    if missing): their split, and the files' paths."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    split = shapes.make_split("test", count, seed=seed)
    paths = [os.path.join(folder, f"scene{i}.png") for i in range(count)]
    for image, path in zip(split.images, paths, strict=True):
        Image.fromarray(image).save(path)
    return split, paths


def run_mrnn(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Runs ``python -m mrnn_jax ARGS`` in a new process and returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "mrnn_jax", *args],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=timeout,
        cwd=REPO,
    )


def run_python(
    code: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Runs a Python snippet in a new process (only the package imported by the snippet)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """A work directory trained with the tiny config by the real command (shared by tests)."""
    workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
    result = run_mrnn("train", "--config", "tiny", "--workdir", workdir, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture
def private_compilation_cache(tmp_path) -> dict[str, str]:
    """A child-process environment whose compilation cache is a copy of the shared one: for
    tests that kill a process that may be writing a cache entry (JAX writes entries in place,
    and a torn one would make later tests warn)."""
    import shutil

    directory = str(tmp_path / "xla-cache")
    if os.path.isdir(SHARED_COMPILATION_CACHE):
        shutil.copytree(SHARED_COMPILATION_CACHE, directory, dirs_exist_ok=True)
    return subprocess_env(MRNN_COMPILATION_CACHE=directory)
