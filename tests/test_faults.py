"""Fault injection: every way a long run goes wrong, done for real, against an uninterrupted run.

kill -9 at random moments (during saves too), SIGINT and SIGTERM, damaged / partial / empty
step folders, a second trainer, a diverging learning rate, a full disk. Each ends in one line
(no traceback) and loses nothing: resumed to the end, parameters are bit-identical to an
uninterrupted run and ``metrics.jsonl`` equals its file row for row (the wall-clock values
``time`` and ``tokens_per_second`` aside).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np
import pytest

import mrnn_jax
from mrnn_jax import cli, configs, run_dir
from mrnn_jax.errors import MrnnError
from mrnn_jax.pages import run_page
from mrnn_jax.run_dir import RunDir
from mrnn_jax.training import checkpoints, loop, metrics_log, signals
from mrnn_jax.training.lock import WorkdirLock
from tests.conftest import REPO, run_mrnn, subprocess_env

TRAIN_ARGS = ["train", "--config", "tiny", "--no-progress", "train.num_steps=60"]


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def mrnn_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` attached to the ``mrnn_jax`` logger (the command line stops propagation)."""
    logger = logging.getLogger("mrnn_jax")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="mrnn_jax")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def _messages(caplog: pytest.LogCaptureFixture, part: str = "") -> list[str]:
    """The ``mrnn_jax`` log messages containing ``part``, each once (the handler may see a
    record twice: on the logger and through propagation)."""
    seen = []
    for r in caplog.records:
        if r.name == "mrnn_jax" and part in r.getMessage() and r.getMessage() not in seen:
            seen.append(r.getMessage())
    return seen


def _params(workdir: str, which: str = "latest") -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(mrnn_jax.load(workdir, which).params)]


def _assert_same_params(a: str, b: str, which: str = "latest") -> None:
    ours, theirs = _params(a, which), _params(b, which)
    assert len(ours) == len(theirs)
    for x, y in zip(ours, theirs, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def _rows(workdir: str) -> list[dict]:
    """metrics.jsonl without the values that measure the wall clock."""
    rows = metrics_log.read_rows(os.path.join(workdir, run_dir.METRICS_FILE))
    return [{k: v for k, v in r.items() if k not in metrics_log.TIMING_KEYS} for r in rows]


def _start(workdir: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mrnn_jax", *TRAIN_ARGS, "--workdir", workdir, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or subprocess_env(),
        cwd=REPO,
    )


def _saved_steps(workdir: str, sub: str = "checkpoints") -> list[int]:
    directory = os.path.join(workdir, sub)
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _saving_now(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(
        checkpoints.TMP_MARK in d for d in os.listdir(directory)
    )


def _best_ahead_of_latest(workdir: str) -> bool:
    best = _saved_steps(workdir, "best")
    return bool(best) and max(best) > max(_saved_steps(workdir), default=0)


def _signal_when(process: subprocess.Popen, condition, signum: int, timeout: float = 180) -> bool:
    """Sends ``signum`` to ``process`` as soon as ``condition()`` holds; False if the process
    ended first. The process is frozen (SIGSTOP) while the condition is confirmed and the signal
    sent, so "the process had already finished" is told apart from "it ignored the signal"."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            process.send_signal(signal.SIGSTOP)
            if process.poll() is not None:  # it ended before it could be frozen
                return False
            process.send_signal(signum)
            process.send_signal(signal.SIGCONT)
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.0005)
    process.kill()
    raise AssertionError("training made no progress")


def _after_new_checkpoint(
    workdir: str, rng: random.Random, most_ahead: int = 2, max_delay: float = 0.3
):
    """A condition: a checkpoint 5 to ``5 * most_ahead`` steps past the newest one exists, plus
    0 to ``max_delay`` seconds."""
    target = max(_saved_steps(workdir), default=0) + 5 * rng.randint(1, most_ahead)
    delay, reached = rng.uniform(0.0, max_delay), {}

    def condition() -> bool:
        if max(_saved_steps(workdir), default=0) >= target:
            reached.setdefault("at", time.time())
            return time.time() - reached["at"] >= delay
        return False

    return condition


def _one_line(stderr: str, prefix: str = "mrnn: error:") -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --- kill -9, SIGINT, SIGTERM ------------------------------------------------------------


@pytest.mark.slow
def test_kill_nine_five_times_sigint_sigterm_then_resume_equals_uninterrupted(
    tmp_path, private_compilation_cache
):
    env = private_compilation_cache
    reference = str(tmp_path / "reference")
    result = run_mrnn(*TRAIN_ARGS, "--workdir", reference, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    workdir = str(tmp_path / "faulty")
    rng = random.Random(1234)
    kinds = []
    # Five kill -9: at random moments after a random number of checkpoints, once while a
    # checkpoint is being written (an orbax temporary folder exists), once between the best
    # checkpoint of a step and its latest checkpoint.
    for plan in ["random", "during_save", "between_best_and_latest", "random", "random"]:
        process = _start(workdir, env=env)
        if plan == "during_save":
            condition = lambda: _saving_now(workdir)  # noqa: B023
        elif plan == "between_best_and_latest":
            condition = lambda: _best_ahead_of_latest(workdir)  # noqa: B023
        else:
            condition = _after_new_checkpoint(workdir, rng)
        if _signal_when(process, condition, signal.SIGKILL):
            kinds.append(plan)
        process.communicate()
    assert len(kinds) == 5, kinds

    # Then SIGINT and SIGTERM: each finishes its step, saves it and exits with one line. Each
    # comes soon after the next checkpoint, so that both land well before the last step (60).
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        process = _start(workdir, env=env)
        soon = _after_new_checkpoint(workdir, rng, most_ahead=1, max_delay=0.05)
        assert _signal_when(process, soon, signum), "the run ended before the signal"
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == status, stderr[-3000:]
        line = _one_line(stderr, "mrnn: stopped by")
        step = int(line.split("after step ")[1].split(";")[0])
        assert f"checkpoint in {os.path.join(workdir, 'checkpoints', str(step))}" in line
        assert max(_saved_steps(workdir)) == step
        assert not _saving_now(workdir)

    final = run_mrnn(*TRAIN_ARGS, "--workdir", workdir, env=env)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from" in final.stderr
    _assert_same_run(workdir, reference)


def test_second_signal_stops_at_once_first_only_asks():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals.handle_signals() as stop:
        stop.defer(True)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name() == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with signals.handle_signals() as stop:  # outside the loop: nothing to save, stop now
        with pytest.raises(signals.Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
        assert raised.value.signum == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# --- damaged, partial and empty step folders ---------------------------------------------


def _truncate_largest(directory: str) -> str:
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(10)
    return largest


def test_damaged_partial_and_empty_steps_fall_back_to_the_next_intact(tiny_run, tmp_path, mrnn_log):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    steps = _saved_steps(workdir)
    newest, older = steps[-1], steps[-2]
    _truncate_largest(os.path.join(workdir, "checkpoints", str(newest), "params"))
    os.makedirs(os.path.join(workdir, "checkpoints", str(newest + 100)))  # empty
    captioner = mrnn_jax.load(workdir, "latest")
    assert captioner.step == older
    warnings = _messages(mrnn_log, "unusable")
    assert len(warnings) == 2, warnings
    assert "an empty folder" in warnings[0] and "OUT_OF_RANGE" in warnings[1]
    aside = os.path.join(workdir, run_dir.ASIDE_DIR)
    assert sorted(os.listdir(aside)) == [f"checkpoints-{newest + 100}", f"checkpoints-{newest}"]
    assert _saved_steps(workdir) == [older]

    # A deleted item of the newest step: resuming takes the step below and trains the rest
    # again, to the same parameters as the undamaged run.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(tiny_run, resumed)
    os.remove(os.path.join(resumed, "checkpoints", str(newest), "meta", "metadata"))
    result = run_mrnn("train", "--config", "tiny", "--workdir", resumed, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"checkpoints/{newest}: checkpoint unusable" in result.stderr
    assert f"resumed from {os.path.join(resumed, 'checkpoints')} at step {older}" in result.stderr
    _assert_same_params(resumed, tiny_run, "latest")
    _assert_same_params(resumed, tiny_run, "best")
    assert _rows(resumed) == _rows(tiny_run)


def test_readers_leave_a_damaged_step_in_place_while_a_trainer_runs(tiny_run, tmp_path, mrnn_log):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    newest, older = _saved_steps(workdir)[-2:][::-1]
    _truncate_largest(os.path.join(workdir, "checkpoints", str(newest), "params"))
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"host": socket.gethostname(), "pid": trainer.pid, "started": time.time()}
        with open(os.path.join(workdir, "lock"), "w") as f:
            json.dump(record, f)
        assert mrnn_jax.load(workdir, "latest").step == older
    finally:
        trainer.kill()
        trainer.wait()
    assert _saved_steps(workdir)[-1] == newest
    assert any("left in place while a trainer holds" in m for m in _messages(mrnn_log))


def test_damaged_best_falls_back_and_nothing_intact_is_one_line(
    tiny_run, tmp_path, mrnn_log, capsys
):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    [best] = _saved_steps(workdir, "best")
    _truncate_largest(os.path.join(workdir, "best", str(best), "params"))
    assert mrnn_jax.load(workdir).step == max(_saved_steps(workdir))
    damaged = f"{os.path.join(workdir, 'best')}: step {best} is damaged (see above); using"
    assert any(damaged in r.getMessage() for r in mrnn_log.records)
    for step in _saved_steps(workdir):
        _truncate_largest(os.path.join(workdir, "checkpoints", str(step), "params"))
    image = os.path.join(REPO, "tests", "data", "tiny_checkpoint", "sample.png")
    for command in (
        ["caption", "--checkpoint", workdir, image],
        ["evaluate", "--checkpoint", workdir],
    ):
        assert cli.main(command) == 2
        error = capsys.readouterr().err
        line = _one_line(error)
        assert f"{workdir}: no intact checkpoint" in line or "no checkpoint found" in line
    assert len(os.listdir(os.path.join(workdir, run_dir.ASIDE_DIR))) == 1 + len(
        _saved_steps(tiny_run)
    )


def test_non_finite_checkpoint_is_never_used(tiny_run, tmp_path, capsys):
    """A run written with NaN parameters (as older versions could): one line, exit 2."""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    for sub in ("best", "checkpoints"):
        shutil.rmtree(os.path.join(workdir, sub))
    good = mrnn_jax.load(tiny_run)
    nan_params = jax.tree.map(lambda x: np.full(x.shape, np.nan, x.dtype), good.params)
    ckpts = checkpoints.RunCheckpoints(workdir)
    meta = {"step": 20}
    config, vocab = configs.to_json(good.config), good.vocab.to_json()
    with pytest.raises(MrnnError, match="not finite"):
        ckpts.save(20, nan_params, None, meta, config, vocab, best=True)
    ckpts._save(ckpts.best, 20, nan_params, None, meta, config, vocab, True)  # bypass the guard
    ckpts.close()
    image = os.path.join(REPO, "tests", "data", "tiny_checkpoint", "sample.png")
    assert cli.main(["caption", "--checkpoint", workdir, image]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no intact checkpoint" in _one_line(captured.err)


def test_vocabulary_that_disagrees_with_the_parameters_is_one_line(tiny_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    [best] = _saved_steps(workdir, "best")
    path = os.path.join(workdir, "best", str(best), "vocab", "metadata")
    with open(path) as f:
        vocab = json.load(f)
    vocab["words"].append("zebra")
    if "counts" in vocab:
        vocab["counts"].append(5)
    with open(path, "w") as f:
        json.dump(vocab, f)
    with pytest.raises(MrnnError, match="parameters disagree with the checkpoint's config"):
        mrnn_jax.load(workdir)


# --- a finished run, metrics.jsonl --------------------------------------------------------


def test_finished_run_run_again_appends_nothing(tiny_run, tmp_path, mrnn_log):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    path = os.path.join(workdir, run_dir.METRICS_FILE)
    with open(path, "rb") as f:
        before = f.read()
    results = loop.train_and_evaluate(configs.load_config("tiny"), workdir, progress=False)
    with open(os.path.join(tiny_run, "results.json")) as f:
        assert results["best_step"] == json.load(f)["best_step"]
    with open(path, "rb") as f:
        assert f.read() == before
    assert any("finished at step 20 already" in r.getMessage() for r in mrnn_log.records)


def test_metrics_log_cut_back_to_the_checkpoint_rows(tmp_path):
    log = metrics_log.MetricsLog(str(tmp_path))
    for step in (5, 10, 15):
        log.write(step, "train", {"loss": step})
    with open(log.path, "a") as f:
        f.write('{"step": 20, "spl')  # a row cut short by a kill
    again = metrics_log.MetricsLog(str(tmp_path))
    again.start(2, 10)
    assert [r["step"] for r in metrics_log.read_rows(log.path)] == [5, 10]
    again.write(15, "train", {"loss": 1})
    assert [r["step"] for r in metrics_log.read_rows(log.path)] == [5, 10, 15]
    assert again.rows == 3
    fresh = metrics_log.MetricsLog(str(tmp_path))
    fresh.start(0, 0)
    assert metrics_log.read_rows(log.path) == []


# --- a second trainer --------------------------------------------------------------------


def test_second_trainer_is_refused_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    lock = WorkdirLock(workdir)
    lock.acquire()  # this test process is the first trainer
    try:
        result = run_mrnn("train", "--config", "tiny", "--workdir", workdir, "--no-progress")
        assert result.returncode == 2
        line = _one_line(result.stderr)
        assert "is in use by another trainer" in line
        assert f"pid {os.getpid()} on host {socket.gethostname()}, started " in line
        assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    finally:
        lock.release()
    assert RunDir.at(workdir).lock_holder() is None


def test_lock_of_a_dead_process_is_taken_over_other_hosts_honoured(tmp_path, mrnn_log):
    workdir = str(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": time.time() - 60}
    with open(os.path.join(workdir, "lock"), "w") as f:
        json.dump(record, f)  # what a kill -9 leaves
    lock = WorkdirLock(workdir)
    lock.acquire()
    assert RunDir.at(workdir).lock_holder()["pid"] == os.getpid()
    assert any(
        f"taking over the lock left by pid {dead.pid}" in r.getMessage() for r in mrnn_log.records
    )
    lock.release()
    with open(os.path.join(workdir, "lock"), "w") as f:
        json.dump({**record, "host": "elsewhere"}, f)
    with pytest.raises(MrnnError, match="which this host cannot check; if that run is gone"):
        WorkdirLock(workdir).acquire()


# --- divergence --------------------------------------------------------------------------


def test_diverging_run_keeps_its_last_finite_checkpoint_and_resumes_lower(tmp_path, mrnn_log):
    workdir = str(tmp_path / "run")
    base = ["train.num_steps=30", "eval.splits=()"]
    loop.train_and_evaluate(
        configs.load_config("tiny", ["train.num_steps=10", "eval.splits=()"]),
        workdir,
        progress=False,
    )
    with pytest.raises(MrnnError) as raised:
        loop.train_and_evaluate(
            configs.load_config("tiny", [*base, "train.learning_rate=1e4"]),
            workdir,
            progress=False,
        )
    message = str(raised.value)
    assert "not finite for 10 steps in a row" in message and "\n" not in message
    assert "the last checkpoint (step 10)" in message and "lower train.learning_rate" in message
    assert _saved_steps(workdir) == [5, 10]  # nothing saved after the divergence
    assert any("update skipped" in r.getMessage() for r in mrnn_log.records)
    for leaf in _params(workdir):
        assert np.isfinite(leaf).all()

    mrnn_log.clear()
    results = loop.train_and_evaluate(configs.load_config("tiny", base), workdir, progress=False)
    assert any(
        "at step 10" in r.getMessage() for r in mrnn_log.records if "resumed" in r.getMessage()
    )
    assert np.isfinite(results["best_val_perplexity"])
    assert max(_saved_steps(workdir)) == 30

    # The stop policy stops at the first non-finite step.
    with pytest.raises(MrnnError, match=r"step 3[1-9]: the loss or the gradients are not finite"):
        loop.train_and_evaluate(
            configs.load_config(
                "tiny",
                [
                    "train.num_steps=40",
                    "eval.splits=()",
                    "train.learning_rate=1e4",
                    "train.on_nonfinite=stop",
                ],
            ),
            workdir,
            progress=False,
        )


# --- a full disk -------------------------------------------------------------------------


@contextlib.contextmanager
def _small_tmpfs(path: str, size: str = "800k") -> Iterator[bool]:
    os.makedirs(path)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path]).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", path])


def test_full_disk_is_one_line_and_leaves_nothing_half_written(
    tiny_run, tmp_path, monkeypatch, capsys
):
    workdir = str(tmp_path / "disk")
    with _small_tmpfs(workdir) as mounted:
        if mounted:  # root: an 800 KiB file system, full after a few checkpoints
            result = run_mrnn("train", "--config", "tiny", "--workdir", workdir, "--no-progress")
            stderr, status = result.stderr, result.returncode
        else:  # not root: a checkpoint writer that finds the disk full
            import orbax.checkpoint as ocp

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(ocp.CheckpointManager, "save", full)
            status = cli.main(["train", "--config", "tiny", "--workdir", workdir, "--no-progress"])
            stderr = capsys.readouterr().err
        assert status == 2, stderr[-3000:]
        line = _one_line(stderr)
        assert "No space left on device" in line, line
        leftovers = [
            os.path.join(r, d)
            for r, ds, _ in os.walk(workdir)
            for d in ds
            if checkpoints.TMP_MARK in d
        ]
        assert leftovers == []
        saved = str(tmp_path / "bigger")
        shutil.copytree(workdir, saved)  # the disk is replaced: resume there
    monkeypatch.undo()
    result = run_mrnn("train", "--config", "tiny", "--workdir", saved, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_params(saved, tiny_run, "latest")
    assert _rows(saved) == _rows(tiny_run)


# --- plain mistakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.batch_size=0", "eval.batch_size=0: must be an integer >= 1"),
        ("train.learning_rate=-1", "train.learning_rate=-1.0: must be a finite number > 0"),
        ("train.learning_rate=1e999", "train.learning_rate=inf: must be a finite number > 0"),
        ("train.max_checkpoints=0", "train.max_checkpoints=0: must be an integer >= 1"),
        (
            "dataset.max_words=0",
            "dataset.max_words=0: must be an integer >= 1 (captions are cut to this many words)",
        ),
        ("train.on_nonfinite=ignore", "train.on_nonfinite='ignore': choose from skip, stop"),
        ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps=0: must be an integer >= 1"),
    ],
)
def test_config_values_checked_up_front(override, message):
    with pytest.raises(MrnnError) as raised:
        configs.load_config("tiny", [override])
    assert str(raised.value) == message


def test_training_split_smaller_than_a_batch_is_one_line(tmp_path, capsys):
    status = cli.main(
        ["train", "--config", "tiny", "--workdir", str(tmp_path), "train.batch_size=400"]
    )
    assert status == 2
    line = _one_line(capsys.readouterr().err)
    assert "the training split has 64 images with captions, fewer than one batch needs" in line


@pytest.mark.parametrize(
    "override",
    ["train.batch_size=400", "dataset.min_count=0", "train.patience=-1", "train.seed=-1"],
)
def test_a_failed_config_check_writes_nothing(tmp_path, capsys, override):
    """Values are checked before anything is written: no work directory is left behind."""
    workdir = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny", "--workdir", str(workdir), override]) == 2
    line = _one_line(capsys.readouterr().err)
    assert override.split("=")[0] in line or "train.batch_size=400" in line
    assert not workdir.exists()


# --- work directories as users spell them: relative paths, make train --------------------

SHORT_RUN = ["train.num_steps=30"]


def _scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows of a work directory: each scalar's (step, value) in order (the
    wall-clock values, ``metrics_log.TIMING_KEYS``, aside). There must be one event file."""
    from tensorboard.backend.event_processing import event_accumulator

    files = [n for n in os.listdir(workdir) if n.startswith("events.out.tfevents")]
    assert len(files) == 1, files
    events = event_accumulator.EventAccumulator(workdir)
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.split("/")[-1] not in metrics_log.TIMING_KEYS
    }


def _assert_same_run(workdir: str, reference: str) -> None:
    """Parameters (latest and best), metrics.jsonl, TensorBoard and results as the reference."""
    _assert_same_params(workdir, reference, "latest")
    _assert_same_params(workdir, reference, "best")
    assert _rows(workdir) == _rows(reference)
    assert _scalars(workdir) == _scalars(reference)
    with (
        open(os.path.join(workdir, "results.json")) as f,
        open(os.path.join(reference, "results.json")) as g,
    ):
        assert json.load(f)["splits"] == json.load(g)["splits"]
    assert os.path.exists(os.path.join(workdir, run_dir.REPORT_FILE))


def _start_in(cwd: str, workdir: str, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    """``mrnn train`` of the tiny config started from ``cwd`` (``workdir`` as given)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mrnn_jax", *TRAIN_ARGS[:-1], "--workdir", workdir, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory) -> str:
    """An uninterrupted 30-step tiny run in an absolute work directory."""
    workdir = str(tmp_path_factory.mktemp("short") / "reference")
    result = run_mrnn(*TRAIN_ARGS[:-1], *SHORT_RUN, "--workdir", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_scst_killed_stopped_and_run_again_equals_uninterrupted(
    short_reference, tmp_path, private_compilation_cache
):
    """SCST as docs/scst.md spells it (relative --workdir and --init-from): kill -9, then
    SIGTERM, then the same command to the end is the same run as an uninterrupted one:
    parameters, metrics.jsonl (reward rows included), TensorBoard and results."""
    env, cwd = private_compilation_cache, str(tmp_path)
    shutil.copytree(short_reference, os.path.join(cwd, "runs", "ce"))
    scst_run = ["--init-from", os.path.join("runs", "ce"), "train.objective=scst"]
    scst_run += ["train.num_steps=20"]
    reference = _start_in(cwd, os.path.join("runs", "reference"), *scst_run, env=env)
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    assert "starting from" in stderr and os.path.join("runs", "ce", "best") in stderr
    _check_scst_run(os.path.join(cwd, "runs", "reference"), os.path.join(cwd, "runs", "ce"))
    relative = os.path.join("runs", "scst")
    workdir = os.path.join(cwd, relative)
    rng = random.Random(19)

    process = _start_in(cwd, relative, *scst_run, env=env)
    assert _signal_when(process, _after_new_checkpoint(workdir, rng, 1), signal.SIGKILL)
    process.communicate()
    process = _start_in(cwd, relative, *scst_run, env=env)
    soon = _after_new_checkpoint(workdir, rng, most_ahead=1, max_delay=0.05)
    assert _signal_when(process, soon, signal.SIGTERM), "the run ended before the signal"
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "resumed from" in stderr and "starting from" not in stderr
    line = _one_line(stderr, "mrnn: stopped by")
    step = int(line.split("after step ")[1].split(";")[0])
    named = line.split("checkpoint in ")[1].split(";")[0]  # as given: relative to the cwd
    assert os.path.join(cwd, named) == os.path.join(workdir, "checkpoints", str(step))

    process = _start_in(cwd, relative, *scst_run, env=env)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "unusable" not in stderr
    rows = _rows(workdir)
    assert any("reward" in r and "reward_baseline" in r for r in rows if r["split"] == "train")
    _assert_same_run(workdir, os.path.join(cwd, "runs", "reference"))


def _check_scst_run(workdir: str, start: str) -> None:
    """What an SCST run logs and selects by: reward and baseline in metrics.jsonl, TensorBoard
    and the report's panels; val/CIDEr-D picks the best; the parameters left the start."""
    rows = metrics_log.read_rows(os.path.join(workdir, run_dir.METRICS_FILE))
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    for row in train_rows:
        assert {"reward", "reward_baseline", "sample_perplexity", "reward_share"} <= set(row)
        assert row["learning_rate"] == 5e-5
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["selected_by"]["metric"] == "val/CIDEr-D"
    panels = run_page.curve_panels(rows, skip_splits=("test", "novel"))
    assert list(panels)[:2] == ["loss", "reward"] and "val/CIDEr-D" in panels
    assert set(panels["reward"]) == {"reward", "reward_baseline"}
    assert os.path.exists(os.path.join(workdir, run_dir.REPORT_FILE))
    assert {"train/reward", "train/reward_baseline"} <= set(_scalars(workdir))
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(_params(start, "best"), _params(workdir, "latest"), strict=True)
    ]
    assert any(moved)


def test_the_readme_resume_commands_relative_and_absolute(tmp_path):
    """`mrnn train ... train.num_steps=10`, then the same with 20: the second resumes at
    step 10 (no step judged damaged), the same whether --workdir is relative or absolute."""
    runs = {}
    for spelling in ("relative", "absolute"):
        workdir = str(tmp_path / spelling) if spelling == "absolute" else spelling
        for steps in (10, 20):
            result = subprocess.run(
                [sys.executable, "-m", "mrnn_jax", *TRAIN_ARGS[:-1], "--workdir", workdir]
                + [f"train.num_steps={steps}"],
                capture_output=True,
                text=True,
                env=subprocess_env(),
                cwd=str(tmp_path),
            )
            assert result.returncode == 0, result.stderr[-3000:]
            assert "unusable" not in result.stderr and "Traceback" not in result.stderr
        assert "at step 10" in result.stderr.split("resumed from")[1].splitlines()[0]
        runs[spelling] = str(tmp_path / spelling)
        assert not os.path.exists(os.path.join(runs[spelling], run_dir.ASIDE_DIR))
    _assert_same_run(runs["relative"], runs["absolute"])


@pytest.mark.slow
def test_make_train_killed_and_run_again_equals_uninterrupted(
    short_reference, private_compilation_cache
):
    """`make train` (tiny settings through CONFIG and ARGS, the Makefile's relative
    runs/ work directory) killed with -9, process group and all, its newest step damaged,
    then run again: one line names the damaged step, and the run resumes from the one
    before it to the uninterrupted run's end. (Relative SIGTERM: the SCST test above.)"""
    relative = os.path.join("runs", f"test-make-{os.getpid()}-{random.randrange(10**6)}")
    workdir = os.path.join(REPO, relative)
    command = ["make", "--no-print-directory", "train", "CONFIG=tiny", f"WORKDIR={relative}"]
    command.append(f"ARGS={' '.join([*SHORT_RUN, '--no-progress'])}")
    env = private_compilation_cache
    try:
        make = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        condition = _after_new_checkpoint(workdir, random.Random(3), most_ahead=2)
        deadline = time.time() + 180
        while not (len(_saved_steps(workdir)) >= 2 and condition()):
            assert make.poll() is None, make.communicate()[1][-3000:]
            assert time.time() < deadline, "make train made no progress"
            time.sleep(0.001)
        os.killpg(make.pid, signal.SIGKILL)  # make and the trainer it started
        make.communicate()
        *_, below, newest = _saved_steps(workdir)
        _truncate_largest(os.path.join(workdir, "checkpoints", str(newest), "params"))
        again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Traceback" not in again.stderr
        damaged = [x for x in again.stderr.splitlines() if "checkpoint unusable" in x]
        assert len(damaged) == 1 and f"checkpoints/{newest}: " in damaged[0], again.stderr
        resumed = again.stderr.split("resumed from")[1].splitlines()[0]
        assert f"at step {below}" in resumed, again.stderr
        _assert_same_run(workdir, short_reference)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- readers beside a trainer, the end of a run --------------------------------------------


def test_readers_beside_a_trainer_that_rotates_every_step(tmp_path, mrnn_log):
    """A checkpoint every step, one kept: readers retry a step that vanishes as they read
    it, and never call a step damaged or the run empty."""
    workdir = str(tmp_path / "run")
    trainer = _start(
        workdir,
        "train.num_steps=100000",
        "train.checkpoint_every=1",
        "train.max_checkpoints=1",
        "train.eval_every=5",
    )
    try:
        deadline = time.time() + 120
        while len(_saved_steps(workdir)) == 0 or len(_saved_steps(workdir, "best")) == 0:
            assert trainer.poll() is None, trainer.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        steps = set()
        for i in range(12):
            captioner = mrnn_jax.load(workdir, "latest" if i % 2 else "best")
            steps.add(captioner.step)
        assert len(steps) > 2  # the trainer moved on while they read
        image = os.path.join(REPO, "tests", "data", "tiny_checkpoint", "sample.png")
        for which in (["--latest"], []):  # the command line too: no traceback, no warning
            result = run_mrnn("caption", "--checkpoint", workdir, *which, image)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "Traceback" not in result.stderr and "unusable" not in result.stderr
        assert trainer.poll() is None
    finally:
        trainer.kill()
        trainer.communicate()
    complaints = [m for m in _messages(mrnn_log) if "unusable" in m or "no intact" in m]
    assert complaints == []
    assert not os.path.exists(os.path.join(workdir, run_dir.ASIDE_DIR))


def _signal_self_when(monkeypatch, module, name: str, signum: int, when=lambda *a: True):
    """Makes ``module.name`` send ``signum`` to this process (once, when ``when(*args)``)
    before it does its work."""
    original, sent = getattr(module, name), []

    def wrapped(*args, **kwargs):
        if not sent and when(*args):
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return sent


def test_signal_during_the_last_evaluation_or_the_report_stops_and_the_rerun_finishes(
    tiny_run, tmp_path, monkeypatch
):

    workdir = str(tmp_path / "run")
    # SIGTERM while the last step's evaluators run: that step is saved, and the run stops
    # with the usual line instead of going on to the final evaluation.
    last = lambda run_evaluators, params, step, is_last: is_last  # noqa: E731
    _signal_self_when(monkeypatch, loop, "_run_due_evaluators", signal.SIGTERM, last)
    with pytest.raises(signals.Interrupted, match="after step 20; checkpoint in") as raised:
        loop.train_and_evaluate(configs.load_config("tiny"), workdir, progress=False)
    assert raised.value.signum == signal.SIGTERM
    assert _saved_steps(workdir)[-1] == 20
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    monkeypatch.undo()

    # SIGTERM while the report is written: no results.json, so the run has not finished.
    _signal_self_when(monkeypatch, run_page, "write_run_report", signal.SIGTERM)
    with pytest.raises(signals.Interrupted):
        loop.train_and_evaluate(configs.load_config("tiny"), workdir, progress=False)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    monkeypatch.undo()

    # The same command again finishes the final evaluation: as an uninterrupted run.
    loop.train_and_evaluate(configs.load_config("tiny"), workdir, progress=False)
    _assert_same_run(workdir, tiny_run)


def test_finished_run_missing_its_report_gets_it_back(tiny_run, tmp_path, mrnn_log):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    os.remove(os.path.join(workdir, run_dir.REPORT_FILE))
    result = run_mrnn("train", "--config", "tiny", "--workdir", workdir, "--no-progress")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "finished at step 20 already" in result.stderr
    assert os.path.exists(os.path.join(workdir, run_dir.REPORT_FILE))
    assert _rows(workdir) == _rows(tiny_run)


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '{"splits": [], "best_step": "x"}'])
def test_results_json_of_the_wrong_shape_is_evaluated_again(tiny_run, tmp_path, content):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        f.write(content)
    status = cli.main(["train", "--config", "tiny", "--workdir", workdir, "--no-progress"])
    assert status == 0
    with (
        open(os.path.join(workdir, "results.json")) as f,
        open(os.path.join(tiny_run, "results.json")) as g,
    ):
        assert json.load(f)["splits"] == json.load(g)["splits"]
    assert _rows(workdir) == _rows(tiny_run)


def _cut_row(path: str, index: int) -> None:
    """Cuts ``path`` in the middle of its row ``index`` (what a damaged write leaves)."""
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "wb") as f:
        f.write(b"".join(lines[:index]) + lines[index][: len(lines[index]) // 2])


def test_a_cut_counted_row_is_restored_on_resume_and_on_a_finished_run(
    tiny_run, tmp_path, mrnn_log
):
    # Resume: the newest checkpoint lost (as if killed before it), a counted row cut.
    workdir = str(tmp_path / "resumed")
    shutil.copytree(tiny_run, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
    counted = len(checkpoints.RunCheckpoints(workdir).read_item(15, "meta")["metrics_log"])
    _cut_row(os.path.join(workdir, run_dir.METRICS_FILE), counted - 1)
    loop.train_and_evaluate(configs.load_config("tiny"), workdir, progress=False)
    assert _rows(workdir) == _rows(tiny_run)
    assert _scalars(workdir) == _scalars(tiny_run)
    assert any("rewritten from the checkpoint" in m for m in _messages(mrnn_log))

    # Finished: a row cut, rerun: restored with a warning, nothing else changes.
    finished = str(tmp_path / "finished")
    shutil.copytree(tiny_run, finished)
    _cut_row(os.path.join(finished, run_dir.METRICS_FILE), 3)
    loop.train_and_evaluate(configs.load_config("tiny"), finished, progress=False)
    assert _rows(finished) == _rows(tiny_run)
    assert any("missing or changed" in m for m in _messages(mrnn_log))
