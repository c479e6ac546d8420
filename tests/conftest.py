"""Shared fixtures: running the ``mrnn`` command in a fresh process, tiny training runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Keras (the VGG-16 reference) runs on JAX in every test process, whichever test module
# imports it first: TensorFlow is installed too (for the TFDS builders) and would be its
# default backend.
os.environ.setdefault("KERAS_BACKEND", "jax")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: quiet, CPU-only, with the repo importable."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


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
