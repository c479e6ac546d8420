"""The GPU check (experiments/gpu_check.py) run at tiny sizes on the CPU, as the GPU machine
would run it: in a fresh process, without the packages that machine lacks (pycocoevalcap,
fastapi), every part present and without errors, both output files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "experiments", "gpu_check.py")
PARTS = ("peak", "train", "torch", "greedy", "beam", "retrieval", "shapes")


def _blocked(folder, *names: str) -> str:
    """A folder that, first on PYTHONPATH, makes importing each of ``names`` fail."""
    for name in names:
        package = folder / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('no {name} here (test)')\n")
    return str(folder)


def _env(blocked: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = blocked  # not the repository: the script finds its source tree itself
    return env


def test_smoke_run_has_every_part_without_errors(tmp_path):
    blocked = _blocked(tmp_path / "blocked", "pycocoevalcap", "fastapi")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--out", str(out)],
        env=_env(blocked),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["meta"]["finished"] and report["meta"]["smoke"]
    assert report["meta"]["missing_modules"] == {}
    assert report["meta"]["mrnn_jax"] == os.path.join(REPO, "mrnn_jax")
    for part in PARTS:
        assert part in report, part
        status = {k: report[part].get(k) for k in ("error", "timeout", "skipped")}
        assert not any(status.values()), (part, status)
    assert report["peak"]["bfloat16_flops"] > 0 and report["peak"]["float32_flops"] > 0
    assert {r["dtype"] for r in report["train"]["rows"]} == {"float32", "bfloat16"}
    assert all(r["loss_finite"] and r["words_per_s"] > 0 for r in report["train"]["rows"])
    assert report["torch"]["rows"] and report["torch"]["rows"][0]["jax_over_torch"] > 0
    assert report["greedy"]["rows"] and report["beam"]["rows"]
    assert report["retrieval"]["metrics"]["image retrieval"]["R@10"] >= 0
    assert all(r["finite"] for r in report["retrieval"]["runs"])
    shapes = report["shapes"]
    assert shapes["within_tolerance"], shapes  # the CPU against its own reference
    table = (out / "gpu_check.md").read_text()
    for part in PARTS:
        assert f"## {part}" in table


def test_missing_modules_are_named_in_one_line(tmp_path):
    blocked = _blocked(tmp_path / "blocked", "ml_collections", "tensorboardX")
    done = subprocess.run(
        [sys.executable, SCRIPT, "--check-imports"],
        env=_env(blocked),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert "ml_collections, tensorboardX" in lines[0]
    assert "train, torch, greedy, beam, retrieval, shapes" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
