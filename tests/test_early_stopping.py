"""Early stopping and best-checkpoint choice on one scalar
(mrnn_jax/training/early_stopping.py), and the training loop that uses them: it stops after
``train.patience`` evaluations without a
better validation perplexity, and a resumed run continues the count exactly."""

from __future__ import annotations

import json
import math
import os

import pytest

from mrnn_jax import configs
from mrnn_jax.evaluation import captioning
from mrnn_jax.training import loop
from mrnn_jax.training.early_stopping import BestSoFar


def test_stops_after_patience_evaluations_without_improvement():
    watch = BestSoFar.start("min", patience=2)
    history = []
    for step, value in [(1, 5.0), (2, 4.0), (3, 4.5), (4, 3.9), (5, 3.9), (6, 4.2)]:
        watch = watch.observe(step, value)
        history.append((watch.improved, watch.stale, watch.should_stop))
    assert history == [
        (True, 0, False),
        (True, 0, False),
        (False, 1, False),
        (True, 0, False),
        (False, 1, False),  # equal is not better
        (False, 2, True),
    ]
    assert (watch.best, watch.best_step) == (3.9, 4)


def test_max_mode_non_finite_values_and_no_patience():
    watch = BestSoFar.start("max", patience=1).observe(1, 0.2).observe(2, 0.3)
    assert (watch.best, watch.best_step, watch.should_stop) == (0.3, 2, False)
    watch = watch.observe(3, math.nan)
    assert watch.should_stop and not watch.improved and watch.best == 0.3
    never = BestSoFar.start("min", patience=0)
    for step in range(1, 50):
        never = never.observe(step, float(step))
    assert not never.should_stop and never.best_step == 1
    # Nothing finite yet: nothing to stop at.
    assert not BestSoFar.start("min", 1).observe(1, math.inf).observe(2, math.nan).should_stop
    with pytest.raises(ValueError, match="mode"):
        BestSoFar.start("lowest")


def test_resumed_watch_continues_the_count_with_the_configs_patience():
    watch = BestSoFar.start("min", 3).observe(1, 2.0).observe(2, 2.5)
    saved = json.loads(json.dumps(watch.to_json()))
    resumed = BestSoFar.start("min", 3).resumed(saved)
    assert (resumed.best, resumed.best_step, resumed.stale) == (2.0, 1, 1)
    assert resumed.observe(3, 2.1).observe(4, 2.2).should_stop
    assert not BestSoFar.start("min", 5).resumed(saved).observe(3, 2.1).should_stop


# Validation perplexity by step, scripted: best at step 8, then worse.
SCRIPT = {2: 5.0, 4: 4.0, 6: 4.5, 8: 3.9, 10: 4.2, 12: 4.3, 14: 4.4, 16: 4.5}


def _run(workdir, monkeypatch, first_eval: int = 2, crash_at: int | None = None) -> dict:
    """A tiny run whose validation perplexities follow SCRIPT (evaluations every 2 steps,
    from ``first_eval`` on); it raises at the evaluation of step ``crash_at``."""
    steps = iter(range(first_eval, 1000, 2))

    def split_perplexity(*args, **kwargs):
        step = next(steps)
        if step == crash_at:
            raise RuntimeError("killed")
        return {"perplexity": SCRIPT.get(step, 9.0), "nll_per_word": 1.0, "num_words": 1.0}

    monkeypatch.setattr(captioning, "split_perplexity", split_perplexity)
    overrides = ["train.num_steps=16", "train.eval_every=2", "train.checkpoint_every=2"]
    overrides += ["train.patience=2", "eval.max_decode_words=3", "train.max_checkpoints=20"]
    config = configs.load_config("tiny", overrides)
    return loop.train_and_evaluate(config, str(workdir), progress=False)


def _validation_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [row["step"] for row in rows if row["split"] == "val"]


def _latest(workdir) -> int:
    return max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.mark.slow
def test_training_stops_early_and_a_resumed_run_stops_at_the_same_step(tmp_path, monkeypatch):
    whole = _run(tmp_path / "whole", monkeypatch)
    # Evaluations at 10 and 12 do not beat step 8's: patience 2 stops the run at 12 of 16.
    assert _validation_steps(tmp_path / "whole") == [2, 4, 6, 8, 10, 12]
    assert _latest(tmp_path / "whole") == 12
    assert (whole["best_step"], whole["best_val_perplexity"]) == (8, 3.9)

    # Killed during the evaluation at step 10: resumes from step 8's checkpoint, whose
    # record of the best (3.9 at step 8, 0 evaluations since) makes it stop at 12 too.
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path / "resumed", monkeypatch, crash_at=10)
    assert _latest(tmp_path / "resumed") == 8
    resumed = _run(tmp_path / "resumed", monkeypatch, first_eval=10)
    assert _latest(tmp_path / "resumed") == 12
    assert (resumed["best_step"], resumed["best_val_perplexity"]) == (8, 3.9)
    assert resumed["splits"] == whole["splits"]

    # A stopped run started again trains no further.
    _run(tmp_path / "whole", monkeypatch, first_eval=14)
    assert _validation_steps(tmp_path / "whole") == [2, 4, 6, 8, 10, 12]
    assert _latest(tmp_path / "whole") == 12
