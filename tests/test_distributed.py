"""Many processes: two processes with two CPU devices each (jax.distributed on localhost,
gloo collectives) train like one process with four devices, and their checkpoint restores in
a single process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import mrnn_jax
from tests.conftest import REPO, run_mrnn, subprocess_env

TRAIN = ["--config", "tiny", "--no-progress", "train.num_steps=6", "train.eval_every=3",
         "train.checkpoint_every=3", "model.dropout_rate=0.0"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latest_params(workdir: str) -> dict:
    """The parameters of a run's latest checkpoint, restored as a notebook user would."""
    return mrnn_jax.load(workdir, which="latest").params


@pytest.mark.slow
def test_two_processes_train_like_one_with_four_devices(tmp_path):
    single = str(tmp_path / "single")
    result = run_mrnn(
        "train", "--workdir", single, *TRAIN,
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = _free_port()
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mrnn_jax",
                "train",
                "--workdir",
                multi,
                *TRAIN,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-4000:]
    assert "process 1 of 2: 2 local device(s), 4 in all" in outputs[1][1]
    # Only process 0 reports (gloo itself prints its connections on every process).
    assert "best checkpoint" in outputs[0][0] and "best checkpoint" not in outputs[1][0]
    assert os.path.isfile(os.path.join(multi, "results.json"))

    # The two-process checkpoint restores in this single process, with the same parameters.
    ours, theirs = _latest_params(multi), _latest_params(single)
    leaves = jax.tree.leaves_with_path(ours)
    assert leaves
    for (path, a), b in zip(leaves, jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=str(path))
