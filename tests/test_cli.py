"""The ``mrnn`` command line: captioning files, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mrnn_jax.data import shapes
from tests.conftest import run_mrnn, write_scenes


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("mrnn: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_caption_prints_caption_and_log_probability(tiny_run, tmp_path):
    split, paths = write_scenes(tmp_path, 2, seed=3)
    # A large JPEG of another size: resized as the encoder expects.
    big = str(tmp_path / "big.jpg")
    Image.fromarray(np.kron(split.images[0], np.ones((5, 7, 1), np.uint8))).save(big)
    result = run_mrnn("caption", "--checkpoint", tiny_run, *paths, big)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip([*paths, big], lines, strict=True):
        name, caption, log_prob = line.split("\t")
        assert name == path
        assert float(log_prob.removeprefix("(log p = ").removesuffix(")")) <= 0.0


def test_caption_missing_image(tiny_run, tmp_path):
    missing = str(tmp_path / "nope.png")
    line = _one_line_error(run_mrnn("caption", "--checkpoint", tiny_run, missing))
    assert missing in line


def test_caption_unreadable_image(tiny_run, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    line = _one_line_error(run_mrnn("caption", "--checkpoint", tiny_run, str(bad)))
    assert str(bad) in line and "not a readable image" in line


def test_caption_truncated_image(tiny_run, tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(shapes.make_split("test", 1, seed=0).images[0]).resize((256, 256)).save(good)
    data = good.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    line = _one_line_error(run_mrnn("caption", "--checkpoint", tiny_run, str(bad)))
    assert str(bad) in line and "truncated" in line


def test_caption_missing_checkpoint(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    line = _one_line_error(run_mrnn("caption", "--checkpoint", str(tmp_path / "none"), str(image)))
    assert "no such checkpoint directory" in line


def test_unknown_config_is_a_clear_error(tmp_path):
    line = _one_line_error(
        run_mrnn("train", "--config", "flickr99", "--workdir", str(tmp_path / "w"))
    )
    assert "unknown config 'flickr99'" in line


def test_help_lists_commands():
    result = run_mrnn("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "caption" in result.stdout
    result = run_mrnn("train", "--help")
    assert "KEY=VALUE" in result.stdout and "resumes" in result.stdout


def test_caption_beam_top_prints_n_captions_best_first(tiny_run, tmp_path):
    path = str(tmp_path / "scene.png")
    Image.fromarray(shapes.make_split("test", 1, seed=4).images[0]).save(path)
    result = run_mrnn("caption", "--checkpoint", tiny_run, "--beam", "3", "--top", "3", path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    log_probs = [float(line.split("(log p = ")[1].rstrip(")")) for line in lines]
    assert all(lp <= 0 for lp in log_probs)


def test_caption_sampling_is_reproducible_from_its_seed(tiny_run, tmp_path):
    path = str(tmp_path / "scene.png")
    Image.fromarray(shapes.make_split("test", 1, seed=4).images[0]).save(path)
    args = ["caption", "--checkpoint", tiny_run, "--sample", "--top", "2", "--temperature", "1.5"]
    first = run_mrnn(*args, "--seed", "1", path)
    again = run_mrnn(*args, "--seed", "1", path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout == again.stdout and len(first.stdout.strip().splitlines()) == 2


def test_caption_conflicting_decoding_flags(tiny_run, tmp_path):
    path = str(tmp_path / "scene.png")
    Image.new("RGB", (8, 8)).save(path)
    line = _one_line_error(
        run_mrnn("caption", "--checkpoint", tiny_run, "--beam", "2", "--sample", path)
    )
    assert "--beam or --sample" in line
    line = _one_line_error(run_mrnn("caption", "--checkpoint", tiny_run, "--top", "2", path))
    assert "--top needs --beam or --sample" in line


def test_overrides_may_come_between_options(tmp_path):
    result = run_mrnn(
        "train", "--config", "tiny", "train.stepz=3", "--workdir", str(tmp_path), "--no-progress"
    )
    assert result.returncode == 2 and "unknown config key 'train.stepz'" in result.stderr
    result = run_mrnn("train", "--config", "tiny", "--workdir", str(tmp_path), "stray")
    assert result.returncode == 2 and "'stray' is not of the form key.path=value" in result.stderr


def test_distributed_flags_go_together(tmp_path):
    result = run_mrnn(
        "train", "--config", "tiny", "--workdir", str(tmp_path), "--coordinator", "localhost:1"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--coordinator, --num-processes and --process-id go together" in result.stderr
