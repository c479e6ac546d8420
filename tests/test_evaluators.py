"""Evaluators in training, selection by any logged scalar, TensorBoard events, the run report."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from mrnn_jax import checkpoint_reader, configs, run_dir
from mrnn_jax.errors import MrnnError
from mrnn_jax.pages import run_page
from mrnn_jax.training.loop import train_and_evaluate
from mrnn_jax.training.selection import Selector

# The tiny config, evaluated every 5 steps: 4 evaluations of every evaluator in 20 steps.
CIDER_RUN = ["train.select_by=val/CIDEr-D", "train.eval_every=5", "train.num_steps=20"]


@pytest.fixture(scope="module")
def cider_run(tmp_path_factory) -> tuple[str, dict]:
    """A tiny shapes run that keeps its best checkpoint by validation CIDEr-D."""
    workdir = str(tmp_path_factory.mktemp("cider") / "run")
    config = configs.load_config("tiny", CIDER_RUN)
    return workdir, train_and_evaluate(config, workdir, progress=False)


def _rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_select_by_cider_evaluates_it_in_training_and_keeps_the_best(cider_run):
    workdir, results = cider_run
    val = [r for r in _rows(workdir) if r["split"] == "val"]
    assert [r["step"] for r in val] == [5, 10, 15, 20]  # one row per evaluation step
    for row in val:  # both default evaluators wrote into the val prefix
        assert {"perplexity", "CIDEr-D", "BLEU-4", "ROUGE-L"} <= set(row)
    ciders = [r["CIDEr-D"] for r in val]
    best = int(np.argmax(ciders))  # the first of equal maxima: a tie is not better
    assert results["best_step"] == val[best]["step"]
    assert results["selected_by"] == {"metric": "val/CIDEr-D", "mode": "max", "value": ciders[best]}
    assert results["best_scalars"]["val/CIDEr-D"] == ciders[best]
    assert results["best_val_perplexity"] == val[best]["perplexity"]
    best_dir, best_step = checkpoint_reader.find_checkpoint(workdir, "best")
    assert best_dir.endswith(run_dir.BEST_DIR) and best_step == val[best]["step"]
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["selected_by"]["metric"] == "val/CIDEr-D"
    assert written["selected_by"]["mode"] == "max"
    # The final evaluation scores captions of every eval split through the same path.
    for split in ("test", "novel"):
        assert {"perplexity", "CIDEr-D", "BLEU-4", "largest object named"} <= set(
            written["splits"][split]
        )


def test_tensorboard_reader_finds_the_logged_scalars(cider_run):
    from tensorboard.backend.event_processing import event_accumulator

    workdir, _ = cider_run
    events = event_accumulator.EventAccumulator(workdir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/perplexity", "train/learning_rate", "val/perplexity"}
    expected |= {"val/CIDEr-D", "val/BLEU-4", "test/CIDEr-D", "novel/perplexity"}
    assert expected <= tags
    rows = _rows(workdir)
    for tag in ("train/loss", "val/CIDEr-D", "val/perplexity", "train/learning_rate"):
        split, name = tag.split("/")
        logged = [(r["step"], r[name]) for r in rows if r["split"] == split]
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [s for s, _ in logged]
        np.testing.assert_allclose([v for _, v in read], [v for _, v in logged], rtol=1e-6)


def test_library_writes_tensorboard_events_without_tensorflow_or_torch(tmp_path):
    """Events are written without TensorFlow or PyTorch loaded (both installed here; torch
    costs a training process 1.5 s to import), and torch still imports afterwards."""
    from tests.conftest import run_python

    code = (
        "import sys\n"
        "from mrnn_jax.training.tensorboard import TensorBoardLog\n"
        f"log = TensorBoardLog({str(tmp_path)!r}); log.start()\n"
        "log.write(1, 'train', {'loss': 1.5}); log.close()\n"
        "print('tensorflow' in sys.modules, 'torch' in sys.modules)\n"
        "import torch\n"
        "print(torch.ones(2).sum().item())\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "2.0"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def _curves_png(page: str) -> Image.Image:
    match = re.search(r'<img id="curves"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert match, "no curves image on the page"
    return Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("RGB")


def test_run_report_draws_every_curve(cider_run):
    workdir, _ = cider_run
    with open(os.path.join(workdir, run_dir.REPORT_FILE), encoding="utf-8") as f:
        page = f.read()
    assert 'data-selected-by="val/CIDEr-D"' in page
    image = np.asarray(_curves_png(page))
    assert image.shape[0] > 400 and image.shape[1] > 1000
    colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    assert len(colours) > 50  # lines, text and axes, not a blank image
    rows = run_page.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    panels = run_page.curve_panels(rows, skip_splits=("test", "novel"))
    assert list(panels)[:3] == ["loss", "perplexity", "learning rate"]
    assert set(panels["perplexity"]) == {"train", "val"}
    assert {"val/CIDEr-D", "val/BLEU", "val/ROUGE-L"} <= set(panels)
    assert set(panels["val/BLEU"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    assert panels["val/CIDEr-D"]["CIDEr-D"][0] == [5, 10, 15, 20]
    # Without skip_splits the final evaluation's points join the perplexity panel.
    assert {"test", "novel"} <= set(run_page.curve_panels(rows)["perplexity"])


def test_run_report_shows_the_curves_in_a_browser(cider_run, tmp_path):
    # Fails, not skips, without Chromium: `make test` installs Debian's chromium as root.
    assert shutil.which("chromium"), "no chromium on the PATH: apt-get install -y chromium"
    workdir, _ = cider_run
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1300,1200",
            "file://" + os.path.join(workdir, run_dir.REPORT_FILE),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    screen = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The curves image sits below the heading and the results table: the blue (#1f77b4)
    # and orange (#ff7f0e) lines of matplotlib's first two colours are on screen.
    blue = np.all(np.abs(screen - [31, 119, 180]) < 30, axis=-1)
    orange = np.all(np.abs(screen - [255, 127, 14]) < 30, axis=-1)
    assert blue.sum() > 200 and orange.sum() > 50


def test_read_metrics_keeps_the_last_row_of_a_step_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 5, "split": "train", "loss": 2.0}\n'
        '{"step": 5, "split": "train", "loss": 1.0}\n'
        '{"step": 10, "split": "val", "perplexity": 3.0}\n'
        '{"step": 15, "spl'
    )
    rows = run_page.read_metrics(path)
    assert [(r["step"], r["split"]) for r in rows] == [(5, "train"), (10, "val")]
    assert rows[0]["loss"] == 1.0


def test_select_by_a_scalar_no_evaluator_logs_is_one_line_error():
    with pytest.raises(MrnnError, match="no enabled evaluator logs under 'dev'"):
        configs.load_config("tiny", ["train.select_by=dev/CIDEr-D", "train.num_steps=2"])


def test_select_by_an_unknown_name_is_refused_when_the_config_loads():
    overrides = ["train.select_by=val/CIDEr", "train.num_steps=5", "train.eval_every=5"]
    with pytest.raises(MrnnError, match="val/CIDEr-D"):  # the message lists what is logged
        configs.load_config("tiny", overrides)


def test_bad_evaluator_entries_are_refused_when_the_config_loads():
    with pytest.raises(MrnnError, match="evaluators.captions.kind"):
        configs.load_config("tiny", ["evaluators.captions.kind=bleu"])
    with pytest.raises(MrnnError, match="train.select_by"):
        configs.load_config("tiny", ["train.select_by=CIDEr-D"])
    with pytest.raises(MrnnError, match="select_mode"):
        configs.load_config("tiny", ["train.select_mode=up"])


# --- the selector ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "mode", "maximise"),
    [
        ("val/perplexity", "auto", False),
        ("val/nll_per_word", "auto", False),
        ("val/CIDEr-D", "auto", True),
        ("val/BLEU-4", "auto", True),
        ("val/image R@1", "auto", True),
        ("val/image median rank", "auto", False),
        ("val/CIDEr-D", "min", False),
        ("val/perplexity", "max", True),
    ],
)
def test_selector_direction(metric, mode, maximise):
    overrides = [f"train.select_by={metric}", f"train.select_mode={mode}"]
    config = configs.load_config("tiny", ["evaluators.retrieval.every=0", *overrides])
    selector = Selector.from_config(config.train)
    assert selector.maximise is maximise
    assert selector.metric == metric
    low, high = 1.0, 2.0
    assert selector.better(high, low) is maximise
    assert selector.better(low, high) is not maximise


def test_selector_never_prefers_missing_or_non_finite_values():
    selector = Selector(metric="val/CIDEr-D", maximise=True)
    assert not selector.better(None, 1.0)
    assert not selector.better(float("nan"), 1.0)
    assert not selector.better(float("inf"), 1.0)
    assert selector.better(0.0, selector.worst)
    assert selector.better(0.0, None)
    assert not selector.better(1.0, 1.0)  # a tie keeps the earlier checkpoint
    assert selector.read({"val/CIDEr-D": 2.5, "val/perplexity": 3.0}) == 2.5
    assert selector.read({"val/perplexity": 3.0}) is None


def test_scoring_without_pycocoevalcap_is_one_line_error(monkeypatch):
    import sys

    from mrnn_jax.evaluation import evaluators

    config = configs.load_config("tiny")
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # as if not installed
    with pytest.raises(MrnnError, match=r"evaluators.captions, eval.metrics .*\[eval\]"):
        evaluators.check_scorers(config)
    configs.apply_overrides(config, ["evaluators.captions.every=-1", "eval.metrics=()"])
    evaluators.check_scorers(config)  # nothing scores captions: no scorer needed


def test_retrieval_evaluator_logs_both_directions_of_its_subset():
    import jax

    from mrnn_jax import sharding
    from mrnn_jax.data import load_dataset
    from mrnn_jax.data.pipeline import CaptionTable
    from mrnn_jax.evaluation import evaluators, retrieval
    from mrnn_jax.model import make_model
    from mrnn_jax.text.vocab import build_vocab

    overrides = ["evaluators.retrieval.every=5", "evaluators.retrieval.num_images=4"]
    config = configs.load_config("tiny", overrides)
    splits = load_dataset(config.dataset, config.encoder).splits
    vocab = build_vocab(splits["train"].records, 1)
    model = make_model(config.model, config.encoder, len(vocab))
    val = splits["val"]
    params = model.init(jax.random.key(0), val.inputs[:1], np.zeros((1, 3), np.int32))["params"]
    mesh = sharding.make_mesh(1)
    built = {e.name: e for e in evaluators.build_evaluators(config, model, vocab, splits, mesh)}
    assert built["retrieval"].every == 5 and built["perplexity"].every == config.train.eval_every
    scalars = built["retrieval"].run(params).scalars
    table = CaptionTable.build_uncut(val.records[:4], vocab, config.dataset.max_words)
    expected, _, _ = retrieval.evaluate_retrieval(
        model, {"params": params}, table.tokens, table.image_index, val.inputs[:4]
    )
    for direction, short in (("image retrieval", "image"), ("sentence retrieval", "sentence")):
        for key in ("R@1", "R@5", "R@10", "median rank"):
            assert scalars[f"{short} {key}"] == expected[direction][key]
    assert evaluators.due(built.values(), 5, last=False) == [built["retrieval"]]


def test_resumed_selection_continues_or_restarts():
    from mrnn_jax.training.resume import resumed_best

    by_cider = Selector("val/CIDEr-D", maximise=True)
    by_perplexity = Selector("val/perplexity", maximise=False)
    meta = {"selected_by": "val/CIDEr-D", "best_value": 0.5, "best_scalars": {"val/CIDEr-D": 0.5}}
    assert resumed_best(meta, by_cider) == (0.5, {"val/CIDEr-D": 0.5})
    assert resumed_best(meta, by_perplexity) == (float("inf"), {})  # selection starts afresh
    old = {"best_val_perplexity": 3.0}  # a checkpoint from before train.select_by
    assert resumed_best(old, by_perplexity) == (3.0, {"val/perplexity": 3.0})
    assert resumed_best(old, by_cider) == (-float("inf"), {})


def test_tensorboard_after_a_lost_checkpoint_shows_each_step_once(tmp_path):
    """A run killed after logging steps its last checkpoint does not hold relogs them on
    resume; TensorBoard's reader then sees every step once, with the resumed run's values."""
    from tensorboard.backend.event_processing import event_accumulator

    overrides = ["train.num_steps=20", "train.eval_every=10", "train.checkpoint_every=10"]
    workdir = str(tmp_path / "run")
    train_and_evaluate(configs.load_config("tiny", overrides), workdir, progress=False)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))  # as if killed before saving
    train_and_evaluate(configs.load_config("tiny", overrides), workdir, progress=False)
    events = event_accumulator.EventAccumulator(workdir, purge_orphaned_data=True)
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [5, 10, 15, 20]
    last = [r for r in _rows(workdir) if r["split"] == "train"][-1]
    assert events.Scalars("train/loss")[-1].value == pytest.approx(last["loss"], rel=1e-6)


def test_captions_evaluator_scores_beam_captions_of_its_subset():
    import jax

    from mrnn_jax import decode, sharding
    from mrnn_jax.data import load_dataset
    from mrnn_jax.evaluation import captioning, evaluators
    from mrnn_jax.model import make_model
    from mrnn_jax.text.vocab import build_vocab

    overrides = ["evaluators.captions.strategy=beam", "evaluators.captions.num_images=4"]
    overrides += ["evaluators.captions.beam_size=2", "evaluators.captions.metrics=BLEU,CIDEr"]
    config = configs.load_config("tiny", overrides)
    splits = load_dataset(config.dataset, config.encoder).splits
    vocab = build_vocab(splits["train"].records, 1)
    model = make_model(config.model, config.encoder, len(vocab))
    val = splits["val"]
    params = model.init(jax.random.key(1), val.inputs[:1], np.zeros((1, 3), np.int32))["params"]
    mesh = sharding.make_mesh(1)
    built = {e.name: e for e in evaluators.build_evaluators(config, model, vocab, splits, mesh)}
    scalars = built["captions"].run(params).scalars
    assert set(scalars) == {
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "CIDEr-D",
        "largest object named",
    }
    subset = evaluators._subset(val, 4)
    options = decode.DecodeOptions(strategy="beam", beam_size=2, max_words=20)
    expected = captioning.evaluate_captioning(
        model, params, subset, vocab, options, max_words=20, batch_size=16, mesh=mesh,
        perplexity=float("nan"), metrics=("BLEU", "CIDEr"),
    )  # fmt: skip
    assert scalars == {k: v for k, v in expected.metrics.items()}
