"""Checkpoints: a fresh process restores a captioner from the directory alone; the committed
checkpoint still restores (a change of format must be deliberate)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import mrnn_jax
from mrnn_jax import api, checkpoint_reader
from mrnn_jax.errors import MrnnError
from mrnn_jax.training import checkpoints
from tests.conftest import run_python

COMMITTED = os.path.join(os.path.dirname(__file__), "data", "tiny_checkpoint")


def test_committed_checkpoint_restores_and_captions_as_recorded():
    with open(os.path.join(COMMITTED, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    captioner = mrnn_jax.load(COMMITTED)
    assert captioner.step == expected["step"]
    assert len(captioner.vocab) == expected["vocab_size"]
    leaves = jax.tree.leaves(captioner.params)
    assert sum(np.size(x) for x in leaves) == expected["num_parameters"]
    [[best]] = api.caption(captioner, [os.path.join(COMMITTED, "sample.png")])
    assert best.text == expected["caption"]
    assert best.log_prob == pytest.approx(expected["caption_log_prob"], abs=1e-4)
    image = captioner.load_images([os.path.join(COMMITTED, "sample.png")])
    log_likelihood = api.score(captioner, image, [expected["reference"]])[0, 0]
    assert log_likelihood == pytest.approx(expected["reference_log_likelihood"], abs=1e-4)


def test_fresh_process_restores_a_trained_run_and_captions(tiny_run, tmp_path):
    from PIL import Image

    from mrnn_jax.data import shapes

    image = shapes.make_split("test", 1, seed=5, image_size=64).images[0]
    path = str(tmp_path / "scene.png")
    Image.fromarray(image).save(path)
    code = (
        "import mrnn_jax\n"
        "from mrnn_jax import api\n"
        f"c = mrnn_jax.load({tiny_run!r})\n"
        f"[[(text, lp)]] = api.caption(c, [{path!r}])\n"
        "assert isinstance(text, str) and lp <= 0.0, (text, lp)\n"
        "print('CAPTION', c.step, repr(text), lp)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CAPTION" in result.stdout
    # Only the package was imported: no training module state was needed.
    assert "mrnn_jax.training.loop" not in code


def test_best_and_latest_are_distinct_choices(tiny_run):
    best_dir, best_step = checkpoint_reader.find_checkpoint(tiny_run, "best")
    latest_dir, latest_step = checkpoint_reader.find_checkpoint(tiny_run, "latest")
    assert best_dir.endswith("best") and latest_dir.endswith("checkpoints")
    with open(os.path.join(tiny_run, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert best_step == results["best_step"]
    assert latest_step == mrnn_jax.load(tiny_run, "latest").step
    step_dir = os.path.join(latest_dir, str(latest_step))
    assert mrnn_jax.load(step_dir).step == latest_step


def test_checkpoint_holds_config_and_vocabulary(tiny_run):
    directory, step = checkpoint_reader.find_checkpoint(tiny_run, "best")
    config = checkpoint_reader.read_json_item(directory, step, "config")
    vocab = checkpoint_reader.read_json_item(directory, step, "vocab")
    meta = checkpoint_reader.read_json_item(directory, step, "meta")
    assert config["model"]["word_dim"] == 16
    assert vocab["words"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert meta["format_version"] == checkpoints.FORMAT_VERSION
    assert set(meta["data_state"]) == {"epoch", "batch_in_epoch"}


def test_missing_or_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(MrnnError, match="no such checkpoint directory"):
        mrnn_jax.load(tmp_path / "absent")
    with pytest.raises(MrnnError, match="no checkpoint found"):
        mrnn_jax.load(tmp_path)


def test_a_step_reads_without_touching_its_neighbours(tmp_path, monkeypatch):
    """A reader looks only at the step it reads, never at a neighbour that a trainer's
    rotation may delete between two looks (orbax's manager stats every step it lists)."""
    best = tmp_path / "best"
    best.mkdir()
    for step in (19, 20):
        os.symlink(os.path.join(COMMITTED, "best", "20"), best / str(step))
    stat, neighbour, looks = os.stat, str(best / "19"), []

    def watched(path, *args, **kwargs):
        if os.fspath(path).startswith(neighbour):
            looks.append(os.fspath(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", watched)
    captioner = mrnn_jax.load(str(best / "20"))
    assert captioner.step == 20
    assert checkpoint_reader.read_json_item(str(best), 20, "meta")["step"] == 20
    assert looks == []


def test_a_reader_starts_over_when_the_trainer_rotates_during_its_read(tmp_path):
    """A step deleted beside the one being read (the trainer's rotation) sends the reader
    back to the newest step; an error while nothing moved is raised."""
    import shutil

    latest = tmp_path / "run" / "checkpoints"
    latest.mkdir(parents=True)
    for step in (19, 20):
        shutil.copytree(os.path.join(COMMITTED, "best", "20"), latest / str(step))
    calls = []

    def read(directory, step):
        calls.append(step)
        if len(calls) == 1:  # the trainer's rotation deletes step 19 while step 20 is read
            shutil.rmtree(latest / "19")
            raise FileNotFoundError(f"{latest / '19'}: No such file or directory")
        return step

    assert checkpoint_reader.read_newest(str(tmp_path / "run"), "latest", read) == 20
    assert calls == [20, 20]

    def fails(directory, step):
        raise FileNotFoundError("not a rotation")

    with pytest.raises(FileNotFoundError, match="not a rotation"):
        checkpoint_reader.read_newest(str(tmp_path / "run"), "latest", fails)


def test_a_read_that_fails_midway_reports_nothing_after_it(tmp_path):
    """A step whose data vanish while it is read (a trainer's rotation) fails that read with
    one exception; TensorStore's threads still reading the other arrays say nothing after it
    (they called back into orbax's closed event loop, printing tracebacks into
    ``mrnn caption``'s output, before the failure reached the reader)."""
    code = f"""
import glob, os, sys, time
import jax, numpy as np, orbax.checkpoint as ocp
from mrnn_jax import checkpoint_reader
params = {{f"w{{i}}": np.random.rand(256, 256).astype(np.float32) for i in range(200)}}
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
for step in range(3):
    item = os.path.join({str(tmp_path)!r}, str(step), "params")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(item, params)
    data = glob.glob(os.path.join(item, "**", "d", "*"), recursive=True)
    os.remove(max(data, key=os.path.getsize))  # most arrays are read before this one fails
    try:
        checkpoint_reader.restore_params({str(tmp_path)!r}, step, abstract)
        sys.exit("read a step whose data are gone")
    except Exception as error:
        print("failed:", type(error).__name__, file=sys.stderr)
time.sleep(0.5)  # the other arrays' reads finish
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("failed: ") == 3, result.stderr[-3000:]
    assert "Event loop is closed" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
