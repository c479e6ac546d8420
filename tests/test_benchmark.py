"""The benchmark suite's FLOP counting (matrix products only), and a smoke run of the script
(it prints numbers; nothing here asserts on time)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from tests.conftest import REPO, subprocess_env

SCRIPT = os.path.join(REPO, "experiments", "benchmark.py")


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matrix_product_flops_are_counted_through_scan_grad_and_convolutions():
    bench = _benchmark()
    a, b = jnp.ones((8, 16)), jnp.ones((16, 32))
    assert bench.flops_of(jnp.matmul, a, b) == 2 * 8 * 16 * 32
    assert bench.flops_of(lambda x: jnp.tanh(x) + jnp.exp(x), a) == 0  # not matrix products

    def scanned(h, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h, None, length=5)[0]

    assert bench.flops_of(scanned, jnp.ones((4, 16)), jnp.ones((16, 16))) == 5 * 2 * 4 * 16 * 16
    # The gradient with respect to both operands: the forward product and two more.
    grad = jax.grad(lambda x, y: jnp.sum(x @ y), argnums=(0, 1))
    assert bench.flops_of(grad, a, b) == 3 * 2 * 8 * 16 * 32
    images, kernel = jnp.ones((2, 10, 10, 3)), jnp.ones((3, 3, 3, 7))
    conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert bench.flops_of(conv, images, kernel) == 2 * (2 * 10 * 10 * 7) * (3 * 3 * 3)


def test_quick_run_prints_the_table(tmp_path):
    out = str(tmp_path / "bench.json")
    result = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--only", "train", "scst", "retrieval", "--json", out],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for setting in ("real-data", "paper"):  # each beside the PyTorch reference
        label = f"| {setting}: vocabulary 1,000, 256-d, batch 32, float32 |"
        assert f"| train step {label}" in result.stdout
        assert f"| train step, PyTorch eager {label}" in result.stdout
    scst = "| vocabulary 1,000, 256-d, 16 images x 5 samples, 16 words, float32 |"
    assert f"| SCST step {scst}" in result.stdout
    assert f"| SCST step, PyTorch (self-critical way) {scst}" in result.stdout
    assert "SCST step: the reward (CIDEr-D) is " in result.stdout
    assert "| 1.00x |" in result.stdout  # the reference's own row
    assert "share of peak" in result.stdout and os.path.isfile(out)
