"""MRNN_COMPILATION_CACHE: a second command loads the programs the first one compiled."""

from __future__ import annotations

import json
import os

from tests.conftest import run_mrnn, run_python, subprocess_env, write_scenes

PROBE = """
import json, os, jax, jax.numpy as jnp
from mrnn_jax import compilation_cache
used = compilation_cache.enable()
jax.jit(lambda x: jnp.tanh(x) * 2.0)(jnp.ones(3)).block_until_ready()
print(json.dumps({"used": used, "jax": jax.config.jax_compilation_cache_dir}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in subprocess_env().items() if "COMPILATION_CACHE" not in k}
    result = run_python(PROBE, env={**clean, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"stderr": result.stderr}


def test_off_unless_asked_for_and_the_users_jax_setting_wins(tmp_path):
    assert _probe()["used"] is None
    assert _probe(MRNN_COMPILATION_CACHE="off")["used"] is None
    directory = str(tmp_path / "cache")
    got = _probe(MRNN_COMPILATION_CACHE=directory)
    assert got["used"] == got["jax"] == directory
    assert os.listdir(directory)  # the jitted function's entry
    theirs = str(tmp_path / "theirs")
    got = _probe(MRNN_COMPILATION_CACHE=directory, JAX_COMPILATION_CACHE_DIR=theirs)
    assert got["used"] == got["jax"] == theirs


def test_an_unwritable_directory_is_a_warning_not_an_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    got = _probe(MRNN_COMPILATION_CACHE=str(blocker / "cache"))
    assert got["used"] is None and got["jax"] is None
    assert "no compilation cache" in got["stderr"]


def test_a_second_caption_command_compiles_nothing_and_prints_the_same(tiny_run, tmp_path):
    _, paths = write_scenes(tmp_path, 2, seed=3)
    directory = str(tmp_path / "cache")
    env = subprocess_env(MRNN_COMPILATION_CACHE=directory)
    args = ("caption", "--checkpoint", tiny_run, "--beam", "3", *paths)
    first = run_mrnn(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted(os.listdir(directory))
    assert entries
    second = run_mrnn(*args, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout == first.stdout
    assert sorted(os.listdir(directory)) == entries  # every program was found, none added
