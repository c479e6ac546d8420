"""Training: ``train_and_evaluate(config, workdir)``, read top to bottom.

A run goes through these steps, each a function below: :func:`prepare` (the config checked
and the data loaded; nothing written yet), :func:`hold` (the work directory, its lock, and
signals that save before they stop), :func:`build_trainer` (vocabulary, model, jitted step,
evaluators), :func:`start_progress` (fresh, or resumed from the newest intact checkpoint),
:func:`train_steps` (the loop: logs, evaluators, selection, early stopping, checkpoints) and
:func:`evaluate_best` (the best checkpoint on the final splits; ``results.json`` last).
The update step itself is :mod:`mrnn_jax.training.step`; what a checkpoint keeps of the run
and how a run resumes is :mod:`mrnn_jax.training.resume`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from mrnn_jax import checkpoint_reader, configs, distributed, files, losses, sharding
from mrnn_jax.configs.choices import ARCHITECTURES
from mrnn_jax.data import Dataset, load_dataset
from mrnn_jax.data.image_files import ImageFiles
from mrnn_jax.data.pipeline import (
    CaptionTable,
    SplitData,
    batch_indices,
    batch_width,
    images_per_batch,
    train_batch,
)
from mrnn_jax.data.records import ImageRecord
from mrnn_jax.encoders.pretrained import load_pretrained, trainable_labels
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import evaluators
from mrnn_jax.evaluation.final import final_evaluation
from mrnn_jax.model import MRNN, make_model
from mrnn_jax.pages import run_page
from mrnn_jax.run_dir import RunDir
from mrnn_jax.text.vocab import Vocabulary, build_vocab
from mrnn_jax.training import init_from, lock, resume, scst, signals
from mrnn_jax.training.checkpoints import RunCheckpoints
from mrnn_jax.training.resume import Progress
from mrnn_jax.training.run_log import RunLog
from mrnn_jax.training.selection import Selector
from mrnn_jax.training.step import (
    TrainState,
    bucket_widths,
    init_state,
    jit_device_data_step,
    jit_train_step,
    make_optimizer,
    make_schedule,
    make_train_step,
)

log = logging.getLogger("mrnn_jax")


def train_and_evaluate(
    config: ConfigDict,
    workdir: str | os.PathLike[str],
    *,
    num_devices: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (resuming from ``workdir`` when it holds a checkpoint) and evaluates.

    The loop runs the evaluators ``config.evaluators`` lists when they are due and keeps the
    checkpoint that is best by ``train.select_by``. Returns the final evaluation of that
    checkpoint (per split: perplexity and caption metrics; what it was selected by), also
    written to ``workdir/results.json``; the run's curves go to ``metrics.jsonl``,
    TensorBoard event files and ``workdir/report.html``. ``config`` is left unchanged.
    """
    prepared = prepare(config, num_devices)
    run = RunDir.at(workdir)
    prepared = with_starting_point(prepared, run)
    with hold(run) as stop:
        return train(prepared, run, stop, progress=progress)


# --- checks and data: nothing is written before they pass --------------------------------


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A checked config (a copy, completed by the pretrained encoder's image settings), its
    mesh, its data and, for a pretrained encoder, the encoder's weights."""

    config: ConfigDict
    mesh: Mesh
    dataset: Dataset
    encoder_params: Any
    selector: Selector
    init: init_from.InitPoint | None = None  # where a fresh SCST run starts


def with_starting_point(prepared: Prepared, run: RunDir) -> Prepared:
    """``prepared`` with the checkpoint a fresh SCST run starts from (``train.init_from``),
    checked against the config's model and the data's vocabulary; unchanged for cross-entropy
    training and for an SCST run that resumes from its own checkpoints."""
    config = prepared.config
    if config.train.objective != "scst" or checkpoint_reader.digit_steps(run.latest):
        return prepared
    init = init_from.find_init(config.train.init_from, config)
    vocab = build_vocab(prepared.dataset.splits["train"].records, config.dataset.min_count)
    init_from.check_vocabulary(init, config.train.init_from, vocab)
    return dataclasses.replace(prepared, init=init)


def prepare(config: ConfigDict, num_devices: int | None = None) -> Prepared:
    """Checks every value of ``config`` that can be checked before training and loads the
    data and pretrained weights; raises :class:`MrnnError` (one line) on any problem."""
    config = copy.deepcopy(config)
    tc = config.train
    mesh = sharding.make_mesh(num_devices)
    sharding.check_batch_size(tc.batch_size, mesh)
    if tc.batch_size % tc.captions_per_image:
        raise MrnnError(
            f"train.batch_size={tc.batch_size} is not a multiple of "
            f"train.captions_per_image={tc.captions_per_image}"
        )
    sharding.check_batch_size(
        tc.batch_size // tc.captions_per_image, mesh, "train.batch_size / train.captions_per_image"
    )
    encoder_params = None
    if config.encoder.name in ARCHITECTURES:  # the weights also say how to read the images
        weights = load_pretrained(config.encoder)
        config.encoder.update(weights.encoder_config(config.encoder))  # the saved config: whole
        encoder_params = weights.params
        log.info("encoder: %s from %s", config.encoder.name, weights.meta["source"]["file_name"])
    selector = Selector.from_config(tc)
    evaluators.check_config(config.evaluators)
    evaluators.check_scorers(config)
    evaluators.check_selection(config.evaluators, selector.metric, selector.key)
    wanted = {"train", "val", *config.eval.splits, *evaluators.split_names(config.evaluators)}
    needed = None if config.dataset.name == "shapes" else wanted
    dataset = load_dataset(config.dataset, config.encoder, needed)
    for split in sorted(wanted):
        if split not in dataset.splits:
            raise MrnnError(
                f"dataset {config.dataset.name!r} has no split {split!r} (has "
                f"{sorted(dataset.splits)}); training needs train and val, eval.splits "
                f"names {list(config.eval.splits)}, and the evaluators read "
                f"{sorted(evaluators.split_names(config.evaluators))}"
            )
    check_one_batch(dataset.splits["train"].records, tc)
    return Prepared(config, mesh, dataset, encoder_params, selector)


#: A vocabulary of fewer words (the reserved tokens included) is suspicious when
#: dataset.min_count dropped words to make it that small.
SMALL_VOCABULARY = 50


def warn_small_vocabulary(vocab: Vocabulary, records: list[ImageRecord], min_count: int) -> None:
    """Logs one warning line when dataset.min_count left a vocabulary of fewer than
    :data:`SMALL_VOCABULARY` words (a closed vocabulary that small, like shapes', is not
    warned about: no word was dropped)."""
    if len(vocab) >= SMALL_VOCABULARY:
        return
    seen = {token for record in records for caption in record.tokens for token in caption}
    dropped = len(seen - set(vocab.words))
    if dropped:
        log.warning(
            "warning: vocabulary of %d words (under %d): dataset.min_count=%d made %d of the "
            "%d training words <unk>; lower dataset.min_count",
            len(vocab),
            SMALL_VOCABULARY,
            min_count,
            dropped,
            len(seen),
        )


def check_one_batch(records: list[ImageRecord], train_config: ConfigDict) -> None:
    """Raises :class:`MrnnError` when the training split cannot fill one batch."""
    per_batch = images_per_batch(train_config.batch_size, train_config.captions_per_image)
    captioned = sum(1 for record in records if record.tokens)
    if captioned < per_batch:
        raise MrnnError(
            f"the training split has {captioned} images with captions, fewer than one "
            f"batch needs ({per_batch}: train.batch_size={train_config.batch_size} / "
            f"train.captions_per_image={train_config.captions_per_image}); lower train.batch_size"
        )


@contextlib.contextmanager
def hold(run: RunDir) -> Iterator[signals.StopRequest]:
    """Makes the work directory and holds it for the block: its lock (process 0 holds it for
    all of a run's processes), and SIGINT / SIGTERM turned into a request that the training
    loop answers by saving, then stopping (:class:`~mrnn_jax.training.signals.Interrupted`)."""
    try:
        os.makedirs(run.path, exist_ok=True)
    except OSError as e:
        raise MrnnError(f"{run.path}: cannot create the work directory ({e.strerror})") from e
    with lock.locked(run.path, enabled=distributed.is_primary()), signals.handle_signals() as stop:
        yield stop


# --- the run -------------------------------------------------------------------------------


def train(
    prepared: Prepared, run: RunDir, stop: signals.StopRequest, *, progress: bool = True
) -> dict:
    """Starts or resumes the run in ``run``, trains it and evaluates its best checkpoint
    (see :func:`train_and_evaluate`); a finished run is not trained again."""
    started = time.time()
    config = prepared.config
    ckpts = RunCheckpoints(run.path, max_to_keep=config.train.max_checkpoints)
    logs = RunLog(run, enabled=distributed.is_primary())
    try:
        latest = ckpts.latest_step()
        trainer = build_trainer(prepared, run, ckpts, latest)
        p, meta = start_progress(trainer, prepared, run, ckpts, latest)
        finished = _finished(run, p, latest, config)
        if finished is not None:
            if distributed.is_primary():
                resume.complete_finished_run(run, finished, meta, logs, config.eval.splits)
            results = finished
        else:
            logs.start(resume.saved_rows(meta) if latest is not None else [], latest or 0)
            train_steps(trainer, p, run, ckpts, logs, stop, progress)
            results = evaluate_best(trainer, p, run, logs, prepared.dataset, started)
    except BaseException:
        ckpts.close_quietly()
        raise
    finally:
        logs.close()
    ckpts.close()
    return results


def _finished(run: RunDir, p: Progress, latest: int | None, config: ConfigDict) -> dict | None:
    """The results of a run that had trained to its end already (None: not finished)."""
    if latest is None or not (latest >= config.train.num_steps or p.watch.should_stop):
        return None
    return resume.finished_results(run, latest)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What stays fixed while a run trains: its config, data, model and jitted step."""

    config: ConfigDict
    mesh: Mesh
    vocab: Vocabulary
    splits: dict[str, SplitData]
    table: CaptionTable
    model: MRNN
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    jitted_step: Callable
    device_data: dict | None
    widths: tuple[int, ...]
    evaluators: list[evaluators.Evaluator]
    selector: Selector
    data_summary: dict
    config_json: dict
    vocab_json: dict
    init: init_from.InitPoint | None = None  # SCST's starting point (a fresh SCST run only)

    @property
    def scst(self) -> bool:
        """Whether the objective is self-critical sequence training."""
        return self.config.train.objective == "scst"

    def step(self, state: TrainState, step: int) -> tuple[TrainState, dict]:
        """Runs training step ``step`` (its batch: a pure function of seed and step)."""
        tc = self.config.train
        if self.scst:
            return self._scst_step(state, step)
        if self.device_data is not None:
            args = (self.table, step, tc.batch_size, tc.seed, tc.captions_per_image)
            indices = batch_indices(*args, widths=self.widths)
            width = batch_width(*args, self.widths)
            batch = sharding.shard_batch(indices, self.mesh)
            return self.jitted_step(state, self.device_data, batch, width)
        batch = train_batch(
            self.table,
            self.splits["train"].inputs,
            step,
            tc.batch_size,
            tc.seed,
            tc.captions_per_image,
            process_index=jax.process_index(),  # each process reads only its own part
            process_count=jax.process_count(),
            widths=self.widths,
        )
        return self.jitted_step(state, sharding.shard_local_batch(batch, self.mesh))

    def _scst_step(self, state: TrainState, step: int) -> tuple[TrainState, dict]:
        """An SCST step on the images a cross-entropy batch of ``step`` would hold."""
        tc = self.config.train
        images = batch_indices(
            self.table,
            step,
            tc.batch_size,
            tc.seed,
            tc.captions_per_image,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )["images"]
        batch = {"image": self.splits["train"].inputs[images], "image_index": images}
        return self.jitted_step(state, sharding.shard_local_batch(batch, self.mesh))

    def summarise(self, window: list[dict], seconds: float) -> dict:
        """The ``train`` row of the steps in ``window`` (taking ``seconds``)."""
        if self.scst:
            return scst.summarise(window, seconds)
        return _summarise(window, seconds)


def build_trainer(
    prepared: Prepared, run: RunDir, ckpts: RunCheckpoints, latest: int | None
) -> Trainer:
    """The run's vocabulary (the checkpoint's, when resuming), model, optimiser, jitted step
    and evaluators; writes ``config.json`` and ``vocab.json``. Refuses to resume under another
    model or other data."""
    config, mesh, dataset = prepared.config, prepared.mesh, prepared.dataset
    tc = config.train
    config_json = configs.to_json(config)
    if latest is not None:
        resume.check_resume(run.path, ckpts.read_item(latest, "config"), config_json)
        resume.check_same_data(
            run.path, ckpts.read_item(latest, "meta").get("data"), dataset.summary()
        )
    primary = distributed.is_primary()  # the one process that writes logs and results
    init = None
    if tc.objective == "scst" and latest is None:  # no intact checkpoint of its own
        init = prepared.init or init_from.find_init(tc.init_from, config)
    splits = dataset.splits
    if latest is not None:
        vocab = Vocabulary.from_json(ckpts.read_item(latest, "vocab"))
    else:
        vocab = build_vocab(splits["train"].records, config.dataset.min_count)
        warn_small_vocabulary(vocab, splits["train"].records, config.dataset.min_count)
        if init is not None:
            init_from.check_vocabulary(init, tc.init_from, vocab)
    if primary:
        files.write_json_atomic(run.config, config_json)
        vocab.save(run.vocab)
    table = CaptionTable.build(splits["train"].records, vocab, config.dataset.max_words)
    inputs = splits["train"].inputs
    log.info(
        "data: %d training captions of %d images, vocabulary %d words, %d device(s)",
        len(table),
        len(splits["train"].records),
        len(vocab),
        mesh.size,
    )
    data_summary = dataset.summary()
    model = make_model(config.model, config.encoder, len(vocab))
    schedule = make_schedule(tc)
    if tc.objective == "scst":
        schedule = optax.constant_schedule(tc.scst.learning_rate)
    pretrained = config.encoder.name in ARCHITECTURES
    labels = None
    if pretrained:
        shapes = jax.eval_shape(
            model.init, jax.random.PRNGKey(0), inputs[:1], table.tokens[:1, :-1]
        )
        labels = trainable_labels(shapes["params"], config.encoder)
    tx = make_optimizer(tc, schedule, labels, config.encoder.get("learning_rate", 0.0))
    # The L2 penalty is the m-RNN's: a pretrained encoder's weights are not pulled to zero.
    l2_skip = ("image_encoder",) if pretrained else ()
    pure_step = make_train_step(model, tx, tc.l2_weight, l2_skip)
    if tc.objective == "scst":
        options = scst.ScstOptions.from_config(tc)
        references = scst.references(splits["train"].records)
        reward = scst.HostReward(vocab, references, options.reward, options.reward_weights)
        pure_step = scst.make_scst_step(model, tx, options, reward, tc.l2_weight, l2_skip)
    device_data = None
    if tc.get("device_data", False) and tc.objective != "scst":  # SCST sends only images
        if isinstance(inputs, ImageFiles):
            raise MrnnError(
                "train.device_data=True holds the training set on the devices: it needs "
                "precomputed features (or an in-memory dataset such as shapes), not image files"
            )
        device_data = sharding.replicate(
            {"inputs": np.asarray(inputs), "tokens": table.tokens}, mesh
        )
        jitted = jit_device_data_step(pure_step, mesh)
        log.info("training set held on the devices (%d captions)", len(table))
    else:
        jitted = jit_train_step(pure_step, mesh)
    return Trainer(
        config=config,
        mesh=mesh,
        vocab=vocab,
        splits=splits,
        table=table,
        model=model,
        schedule=schedule,
        tx=tx,
        jitted_step=jitted,
        device_data=device_data,
        widths=bucket_widths(config),
        evaluators=evaluators.build_evaluators(config, model, vocab, splits, mesh),
        selector=prepared.selector,
        data_summary=data_summary,
        config_json=config_json,
        vocab_json=vocab.to_json(),
        init=init,
    )


def start_progress(
    trainer: Trainer, prepared: Prepared, run: RunDir, ckpts: RunCheckpoints, latest: int | None
) -> tuple[Progress, dict]:
    """Fresh parameters from the seed, or the state of the checkpoint at ``latest`` with
    its ``meta`` (the best value so far, early stopping, logs: see
    :mod:`mrnn_jax.training.resume`)."""
    tc = trainer.config.train
    first_image, first_tokens = trainer.splits["train"].inputs[:1], trainer.table.tokens[:1, :-1]
    state = init_state(
        trainer.model, trainer.tx, tc.seed, first_image, first_tokens, prepared.encoder_params
    )
    if trainer.init is not None:  # SCST: the trained model, a fresh optimiser
        params = init_from.read_params(trainer.init, _abstract(state.params))
        state = state.replace(params=params, opt_state=trainer.tx.init(params))
        log.info("starting from %s", trainer.init.describe())
    state = sharding.replicate(state, trainer.mesh)
    meta: dict = {}
    if latest is not None:
        abstract = _abstract(state)
        params, extras, meta = ckpts.restore(latest, abstract.params, abstract.checkpoint_extras())
        state = TrainState(params=params, **extras)
        log.info("resumed from %s at step %d", run.latest, latest)
    return resume.progress(state, meta, trainer.selector, tc, latest), meta


# --- the loop ------------------------------------------------------------------------------


def train_steps(
    trainer: Trainer,
    p: Progress,
    run: RunDir,
    ckpts: RunCheckpoints,
    logs: RunLog,
    stop: signals.StopRequest,
    progress: bool,
) -> None:
    """Trains from ``p.step`` to ``train.num_steps`` (or an early stop), logging, evaluating
    and saving when due; a signal saves the step and raises ``Interrupted``."""
    tc = trainer.config.train
    primary = distributed.is_primary()
    bar = tqdm(
        total=tc.num_steps,
        initial=p.step,
        disable=not progress or not primary,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    pending: list[jax.Array] = []  # the last steps' finite flags, not yet read by the guard
    window_start = time.time()
    stop.defer(True)  # from here a first SIGINT / SIGTERM finishes the step, saves, stops
    while p.step < tc.num_steps and not p.watch.should_stop:
        p.state, step_metrics = trainer.step(p.state, p.step)
        p.window.append(step_metrics)
        p.step += 1
        bar.update(1)
        last = p.step == tc.num_steps
        pending.append(step_metrics["finite"])
        stopping = signals.agreed(stop, p.step % tc.log_every == 0)
        every = (tc.log_every, tc.eval_every, tc.checkpoint_every)
        if last or stopping or any(p.step % n == 0 for n in every):
            # The host is about to read the state: first the non-finite guard.
            p.guard.check(_step_flags(sharding.to_host(pending), p.step), p.last_saved)
            pending = []
        if p.step % tc.log_every == 0 or last:
            _log_train(trainer, p, logs, bar, time.time() - window_start)
            window_start = time.time()
        paused = time.time()
        is_best = _evaluate(trainer, p, logs, bar if primary else None, last)
        early_stop = p.watch.should_stop
        if p.step % tc.checkpoint_every == 0 or last or is_best or stopping or early_stop:
            _save(trainer, p, ckpts, logs, is_best)
        if stopping:
            bar.close()
            raise _interrupted(stop, p, run, "resume")
        window_start += time.time() - paused  # tokens per second count training time only
        if early_stop:
            _log_early_stop(p, trainer.selector)
    stop.defer(False)  # nothing left to save: a signal stops the final evaluation at once
    bar.close()
    if stop.requested:  # came during the last step's evaluation or save, after the check
        raise _interrupted(stop, p, run, "finish the final evaluation")


def _log_train(trainer: Trainer, p: Progress, logs: RunLog, bar: tqdm, seconds: float) -> None:
    """Writes the ``train`` row of the steps since the last one."""
    summary = trainer.summarise(sharding.to_host(p.window), seconds)
    summary["learning_rate"] = float(trainer.schedule(p.step))
    logs.write(p.step, "train", summary)
    shown = PROGRESS_SCST if trainer.scst else PROGRESS
    bar.set_postfix({short: form.format(summary[key]) for key, (short, form) in shown.items()})
    p.window = []


def _evaluate(trainer: Trainer, p: Progress, logs: RunLog, bar: tqdm | None, last: bool) -> bool:
    """Runs the evaluators due after ``p.step``, logs their scalars, and updates the best
    value and early stopping; returns whether these parameters are the best so far."""
    scalars = _run_due_evaluators(trainer.evaluators, p.state.params, p.step, last)
    for prefix, values in _by_prefix(scalars).items():
        logs.write(p.step, prefix, values)
    if not scalars:
        return False
    selector = trainer.selector
    value = _selection_value(selector, scalars, p.step)
    if bar is not None:
        bar.write(f"step {p.step}: " + _describe(scalars))
    if value is None:
        return False
    if not math.isfinite(value):
        log.warning("step %d: %s is not finite", p.step, selector.metric)
    # Parameters whose update was just skipped as non-finite are not saved, so they cannot
    # be the best: that evaluation counts as no improvement.
    p.watch = p.watch.observe(p.step, math.nan if p.guard.in_a_row else value)
    if p.watch.improved:
        p.best_value, p.best_scalars = value, scalars
    return p.watch.improved


def _save(trainer: Trainer, p: Progress, ckpts: RunCheckpoints, logs: RunLog, best: bool) -> None:
    """Saves the latest checkpoint of ``p`` (and the best one, when ``best``); parameters
    whose update was just skipped as non-finite are not saved."""
    if p.guard.in_a_row:
        log.warning("step %d: no checkpoint (its update was skipped as non-finite)", p.step)
        return
    tc = trainer.config.train
    meta = resume.checkpoint_meta(
        p, trainer.table, tc, trainer.selector, trainer.data_summary, logs
    )
    both = (meta, trainer.config_json, trainer.vocab_json)
    if best:
        ckpts.save(p.step, p.state.params, None, *both, best=True)
    ckpts.save(p.step, p.state.params, p.state.checkpoint_extras(), *both)
    p.last_saved = p.step


def _interrupted(
    stop: signals.StopRequest, p: Progress, run: RunDir, then: str
) -> signals.Interrupted:
    """The one line a signal stops the run with."""
    saved = "no checkpoint yet"
    if p.last_saved is not None:
        saved = f"checkpoint in {run.step(p.last_saved)}"
    return signals.Interrupted(
        stop.signum,
        f"stopped by {stop.name()} after step {p.step}; {saved}; run the same command to {then}",
    )


# --- the final evaluation ----------------------------------------------------------------


def evaluate_best(
    trainer: Trainer, p: Progress, run: RunDir, logs: RunLog, dataset: Dataset, started: float
) -> dict:
    """Evaluates the best checkpoint on the final splits, logs each split's scalars, and
    writes ``report.html`` and then ``results.json`` (whose presence means: finished)."""
    best_dir, best_step = checkpoint_reader.find_checkpoint(run.path, "best")
    if best_dir != run.best:
        log.warning("no finite %s: evaluating the latest checkpoint", trainer.selector.metric)
    params = checkpoint_reader.restore_params(best_dir, best_step, _abstract(p.state.params))
    results = {
        "best_step": best_step,
        "selected_by": {**trainer.selector.describe(), "value": resume.json_number(p.best_value)},
        "best_scalars": p.best_scalars,
        "best_val_perplexity": p.best_scalars.get("val/perplexity"),
        "stopped_early": p.watch.should_stop,
        "data": dataset.summary(),  # again: images found broken while training count too
        "splits": {},
    }
    t = trainer
    for split, values, examples in final_evaluation(
        t.config, t.model, params, t.vocab, t.splits, t.mesh
    ):
        results["splits"][split] = values
        results.setdefault("examples", {})[split] = examples
        logs.write(best_step, split, values)
    logs.close()  # every event on disk before the run counts as finished
    results["wall_time_seconds"] = time.time() - started
    if distributed.is_primary():
        run_page.write_run_report(run.path, results)
        files.write_json_atomic(run.results, results)
    return results


# --- small helpers ---------------------------------------------------------------------------


def _step_flags(flags: list, step: int) -> list[tuple[int, bool]]:
    """``(step, finite)`` of the steps up to ``step`` whose finite flags are ``flags``."""
    first = step - len(flags) + 1
    return [(first + i, bool(f)) for i, f in enumerate(flags)]


def _run_due_evaluators(
    run_evaluators: list[evaluators.Evaluator], params: Any, step: int, last: bool
) -> dict[str, float]:
    """Runs the evaluators due after ``step``; returns their scalars as ``prefix/name``."""
    scalars = {}
    for evaluator in evaluators.due(run_evaluators, step, last):
        for name, value in evaluator.run(params).scalars.items():
            scalars[f"{evaluator.prefix}/{name}"] = float(value)
    return scalars


def _by_prefix(scalars: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"val/perplexity": x}`` as ``{"val": {"perplexity": x}}`` (one log row per prefix)."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in scalars.items():
        prefix, name = key.split("/", 1)
        grouped.setdefault(prefix, {})[name] = value
    return grouped


def _selection_value(selector: Selector, scalars: dict[str, float], step: int) -> float | None:
    """The selection scalar of this step's evaluations (None when its evaluator did not run);
    an evaluator that ran under its prefix without that name is a config error."""
    value = selector.read(scalars)
    if value is None and any(k.startswith(selector.prefix + "/") for k in scalars):
        logged = sorted(k for k in scalars if k.startswith(selector.prefix + "/"))
        raise MrnnError(
            f"{selector.key}={selector.metric!r} was not logged at step {step}; the "
            f"evaluators logged {', '.join(logged)}"
        )
    return value


def _describe(scalars: dict[str, float]) -> str:
    """A short progress line of evaluation scalars."""
    return ", ".join(f"{k} {v:.4g}" for k, v in scalars.items())


def _log_early_stop(p: Progress, selector: Selector) -> None:
    """Says that the run stops early, and why."""
    watch = p.watch
    message = (
        f"step {p.step}: no better {selector.metric} in {watch.stale} evaluations (best "
        f"{watch.best:.4g} at step {watch.best_step}): stopping early (train.patience)"
    )
    log.info(message)  # once: the log's handler clears the progress bar around it


# What the progress bar shows of a ``train`` row: key -> (label, format).
PROGRESS = {
    "loss": ("loss", "{:.3f}"),
    "perplexity": ("ppl", "{:.2f}"),
    "tokens_per_second": ("tok_s", "{:.0f}"),
}
PROGRESS_SCST = {
    "reward": ("reward", "{:.3f}"),
    "reward_baseline": ("baseline", "{:.3f}"),
    "samples_per_second": ("samples_s", "{:.0f}"),
}


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _summarise(window: list[dict], seconds: float) -> dict:
    """Mean loss and gradient norm, corpus perplexity and tokens per second of a window."""
    nll = sum(float(m["nll_sum"]) for m in window)
    tokens = sum(float(m["num_tokens"]) for m in window)
    return {
        "loss": float(np.mean([m["loss"] for m in window])),
        "perplexity": losses.perplexity(nll, tokens),
        "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
