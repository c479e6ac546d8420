"""Every GPU figure in one short run: one command, prepared and tested on a CPU beforehand.

    python3 experiments/gpu_check.py --out OUT            # the real check (about 5 minutes)
    python3 experiments/gpu_check.py --smoke --out OUT    # tiny sizes, on a CPU (under a minute)
    python3 experiments/gpu_check.py --make-reference     # the CPU loss curve of the shapes part
    python3 experiments/gpu_check.py --check-imports      # only: which parts could not run

Parts, in this order (each with its own time budget, all under an overall deadline; a part
that runs past its budget is cut short and marked so, one that fails records its error and
the run goes on; ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` are rewritten after every
figure, so a crash or a kill still leaves what came before):

* ``peak``: the device, jax's version, and the same-run matrix-multiply peak (a jitted
  ``n x n x n`` product: bfloat16; float32 at JAX's default precision, TF32 on recent NVIDIA
  GPUs; float32 at ``highest`` precision).
* ``train``: the library's training step (``make_train_step`` jitted by ``jit_train_step``:
  dropout 0.5, L2, clipping, Adam) at paper sizes (vocabulary 10,000, 4,096-d features,
  every caption 19 words + the end token = 20 positions) from 256 to 65,536 words a step, in
  float32 and bfloat16 (``model.compute_dtype``): words/s, matrix-product FLOP/s (counted in
  the jitted program as ``make bench`` counts them), MFU against the same-run peak, and
  device memory (the process's peak so far, and the compiled program's own footprint).
* ``torch``: the same m-RNN step in PyTorch (``experiments/torch_mrnn.py``) on the same device
  and batches, eager, timed alternately with the JAX step, as a ratio; last, if time is left,
  ``torch.compile`` at the largest size.
* ``greedy`` and ``beam``: greedy and beam-3 captions per second, batch 1 to 4,096.
* ``retrieval``: a Flickr8K-shaped set (``flickr8k_shaped.py``), a short training on it with
  the training set held on the device (``train.device_data``'s step), then the full
  1,000 images x 5,000 sentences test scoring (``retrieval.evaluate_retrieval``): seconds and
  R@1/5/10, median rank.
* ``shapes``: a short ``train_and_evaluate`` run on the built-in ``shapes`` set at float32
  ``highest`` precision whose logged training losses are compared with the CPU's
  (``experiments/gpu_check_reference.json``, made by ``--make-reference`` on a CPU).

docs/gpu.md says how to run it on a GPU machine that has no package registry.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

START = time.perf_counter()  # the overall deadline counts from here, imports included
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The source tree, not an installed copy: the GPU machine runs it from a bare checkout.
sys.path[:0] = [ROOT, HERE]
# JAX takes 75% of the GPU's memory at its first use by default; PyTorch runs in this same
# process, so JAX takes 60% (83 GB of an H200: far more than any part here needs).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

PARTS = ("peak", "train", "torch", "greedy", "beam", "retrieval", "shapes")
REFERENCE = os.path.join(HERE, "gpu_check_reference.json")
TOLERANCE = 2e-2  # largest relative deviation of a logged training loss from the CPU's

# What each part imports (the library needs the first group), so that a machine without
# one of them says so in one line and runs the other parts.
LIBRARY = ("jax", "numpy", "flax", "optax", "orbax.checkpoint", "ml_collections", "yaml", "PIL")
LIBRARY += ("tqdm",)
NEEDS = {
    "peak": ("jax", "numpy"),
    "train": LIBRARY,
    "torch": (*LIBRARY, "torch"),
    "greedy": LIBRARY,
    "beam": LIBRARY,
    "retrieval": LIBRARY,
    "shapes": (*LIBRARY, "tensorboardX", "matplotlib"),
}


def _sizes(smoke: bool) -> dict[str, Any]:
    """The sizes and budgets (seconds) of the real check, or of the CPU smoke run."""
    if smoke:
        return {
            "peak_size": 512,
            "peak_calls": 4,
            "runs": 2,
            "vocab_size": 500,
            "feature_dim": 64,
            "positions": 20,
            "train_words": (256,),
            "train_batches": 2,
            "torch_words": (256,),
            "torch_compile_backend": None,  # not on the smoke run: its CPU compile is slow
            "decode_batches": (1, 8),
            "decode_words": 20,
            "beam_size": 3,
            "retrieval_images": 16,
            "retrieval_train_steps": 4,
            "retrieval_batch": 16,
            "retrieval_tiles": ((8, 8),),
            "shapes": "smoke",
            "budgets": {
                "peak": 20,
                "train": 60,
                "torch": 60,
                "greedy": 30,
                "beam": 30,
                "retrieval": 60,
                "shapes": 60,
                "torch_compile": 30,
            },
            "deadline": 240,
        }
    return {
        "peak_size": 8192,
        "peak_calls": 10,
        "runs": 5,
        "vocab_size": 10_000,
        "feature_dim": 4096,
        "positions": 20,
        "train_words": (256, 1024, 4096, 16_384, 65_536),
        "train_batches": 3,
        "torch_words": (256, 4096, 65_536),
        "torch_compile_backend": "inductor",
        "decode_batches": (1, 32, 256, 1024, 4096),
        "decode_words": 20,
        "beam_size": 3,
        "retrieval_images": None,  # all 1,000 test images, 5,000 sentences
        "retrieval_train_steps": 300,
        "retrieval_batch": 128,
        "retrieval_tiles": ((128, 128), (16, 32)),  # larger first, then mrnn retrieve's default
        "shapes": "full",
        # Seconds per part; the overall deadline cuts the later ones if the earlier overrun.
        "budgets": {
            "peak": 30,
            "train": 130,
            "torch": 50,
            "greedy": 40,
            "beam": 50,
            "retrieval": 100,
            "shapes": 170,  # its data (drawn with pillow) takes most of it
            "torch_compile": 120,  # last, with whatever time is left
        },
        "deadline": 440,
    }


# The shapes part's runs: the same config on the CPU (the reference) and here.
SHAPES_RUNS = {
    "full": (
        "shapes",
        [
            "train.num_steps=300",
            "train.log_every=25",
            "train.eval_every=300",
            "train.checkpoint_every=300",
            "evaluators.captions.every=-1",  # no pycocoevalcap, no Java on the GPU machine
            "eval.metrics=()",
            "eval.splits=('test',)",
        ],
    ),
    "smoke": (
        "tiny",
        [
            "train.num_steps=20",
            "train.log_every=5",
            "train.eval_every=20",
            "train.checkpoint_every=20",
            "evaluators.captions.every=-1",
            "eval.metrics=()",
            "eval.splits=('test',)",
        ],
    ),
}

# The optimiser settings of ``make bench``'s training step (experiments/benchmark.py).
BENCH_TRAIN = {
    "learning_rate": 1e-3,
    "warmup_steps": 10,
    "num_steps": 1000,
    "final_learning_rate_fraction": 0.05,
    "grad_clip_norm": 5.0,
}


# --- the run: budgets, incremental output -------------------------------------------------


class PartTimeout(BaseException):
    """Raised by the alarm when a part runs past its budget (a BaseException, so that no
    ``except Exception`` in library code swallows it)."""


class Terminated(BaseException):
    """Raised on SIGTERM (e.g. from ``timeout``): the figures so far are written, then exit."""


def _alarm(signum, frame) -> None:
    raise PartTimeout()


def _terminate(signum, frame) -> None:
    raise Terminated()


class Clock:
    """A part's time budget in seconds, from now."""

    def __init__(self, budget: float):
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        """Seconds since the part started."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds of the budget left (negative once it is spent)."""
        return self.budget - self.elapsed()


class Check:
    """The report being filled in, the shared state of the parts, and the writing of both
    files after every figure."""

    def __init__(self, out: str | None, sizes: dict, smoke: bool, deadline: float):
        self.out, self.sizes, self.smoke = out, sizes, smoke
        self.started = START
        self.deadline = deadline
        self.peaks: dict[str, float] = {}
        self.jax_runs: dict[int, Callable] = {}  # float32 train steps kept for the torch part
        self.missing: dict[str, str] = {}
        self.report: dict[str, Any] = {"meta": {}}

    def left(self) -> float:
        """Seconds to the overall deadline."""
        return self.deadline - (time.perf_counter() - self.started)

    def save(self) -> None:
        """Writes gpu_check.json and gpu_check.md (atomically) into the output folder."""
        self.report["meta"]["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        if not self.out:
            return
        os.makedirs(self.out, exist_ok=True)
        _write(os.path.join(self.out, "gpu_check.json"), _dumps(self.report) + "\n")
        _write(os.path.join(self.out, "gpu_check.md"), markdown(self.report))

    def run(self, name: str, fn: Callable, budget: float, target: dict | None = None) -> None:
        """Runs part ``fn(check, out, clock)`` within ``budget`` seconds (and the deadline),
        recording its figures in ``out`` (``self.report[name]``, or ``target``) as they come,
        a timeout or an error, and its wall time."""
        out = {} if target is None else target
        if target is None:
            self.report[name] = out
        missing = sorted({m for m in NEEDS.get(name, ()) if m in self.missing})
        budget = min(budget, self.left())
        if missing:
            out["error"] = f"missing module(s): {', '.join(missing)}"
        elif budget < 5:
            out["skipped"] = f"the overall deadline ({self.deadline:.0f} s) was reached"
        if missing or budget < 5:
            print(f"[{name}] {out.get('error') or out['skipped']}", flush=True)
            self.save()
            return
        clock = Clock(budget)
        out["budget_s"] = round(budget, 1)
        print(f"[{name}] start (budget {budget:.0f} s)", flush=True)
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, budget + 5)  # the hard limit; loops stop sooner
        try:
            fn(self, out, clock)
        except PartTimeout:
            out["timeout"] = f"cut short after {clock.elapsed():.0f} s (budget {budget:.0f} s)"
        except Terminated:
            out["timeout"] = f"terminated (SIGTERM) after {clock.elapsed():.0f} s"
            raise
        except Exception as e:  # a part's failure is a figure too: record it and go on
            out["error"] = f"{type(e).__name__}: {e}"[:2000]
            out["traceback"] = traceback.format_exc()[-4000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            out["seconds"] = round(clock.elapsed(), 2)
            self.save()
        state = next((k for k in ("error", "timeout") if k in out), "done")
        print(f"[{name}] {state} in {out['seconds']:.1f} s", flush=True)
        if "error" in out:
            print(out["traceback"], file=sys.stderr, flush=True)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(report: dict) -> str:
    return json.dumps(_plain(report), indent=1)


def check_imports(parts: tuple[str, ...] = PARTS) -> dict[str, str]:
    """Imports every module the parts need; returns the missing ones with their errors."""
    missing = {}
    for name in sorted({m for part in parts for m in NEEDS[part]}):
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a broken install
            missing[name] = f"{type(e).__name__}: {e}"
    return missing


def missing_line(missing: dict[str, str]) -> str | None:
    """One line naming the missing modules and the parts that cannot run, or None."""
    if not missing:
        return None
    parts = [p for p in PARTS if any(m in missing for m in NEEDS[p])]
    return (
        f"gpu_check: missing module(s) {', '.join(sorted(missing))}: part(s) "
        f"{', '.join(parts)} cannot run (install the wheels: docs/gpu.md)"
    )


def _versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for package in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "torch",
        "ml-collections",
        "tensorboardX",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _bench():
    """experiments/benchmark.py (``make bench``): its FLOP counting, model and batches."""
    import benchmark

    return benchmark


def _device_peak_bytes() -> int | None:
    """The device's peak bytes in use so far in this process (None where not reported)."""
    import jax

    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def _median(fn: Callable[[], object], runs: int) -> float:
    from timing import median_time

    return median_time(fn, runs)[0]


# --- peak ----------------------------------------------------------------------------------


def matmul_rate(dtype, size: int, precision: str | None, runs: int, calls: int) -> float:
    """FLOP/s of a jitted ``size``-cubed matrix product in ``dtype`` at ``precision``:
    ``calls`` products issued back to back per timed run (the device never waits for the
    host), median of ``runs``."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(keys[0], (size, size), dtype)
    b = jax.random.normal(keys[1], (size, size), dtype)
    product = jax.jit(functools.partial(jnp.matmul, precision=precision))

    def burst():
        for _ in range(calls):
            c = product(a, b)
        return c

    return 2.0 * size**3 * calls / _median(burst, runs)


def part_peak(check: Check, out: dict, clock: Clock) -> None:
    """The device and its same-run matrix-multiply peaks."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    out.update(
        platform=device.platform,
        device_kind=device.device_kind,
        device_count=jax.device_count(),
        jax_version=jax.__version__,
        memory_limit_bytes=(device.memory_stats() or {}).get("bytes_limit"),
        size=check.sizes["peak_size"],
    )
    check.save()
    s = check.sizes
    for key, dtype, precision in (
        ("bfloat16", jnp.bfloat16, None),
        ("float32", jnp.float32, None),  # JAX's default: TF32 on recent NVIDIA GPUs
        ("float32_highest", jnp.float32, "highest"),
    ):
        out[f"{key}_flops"] = matmul_rate(
            dtype, s["peak_size"], precision, s["runs"], s["peak_calls"]
        )
        check.peaks[key] = out[f"{key}_flops"]
        check.save()


# --- train ---------------------------------------------------------------------------------


class TrainProgram:
    """The library's jitted training step on paper-sized layers, over a fixed list of
    batches placed on the device: ``run()`` takes one step per batch; ``flops`` is their
    matrix-product FLOPs, ``memory`` the compiled program's footprint in bytes."""

    def __init__(self, vocab_size: int, feature_dim: int, dtype: str, batches: list[dict]):
        import numpy as np
        from ml_collections import ConfigDict

        from mrnn_jax import sharding
        from mrnn_jax.model import make_model
        from mrnn_jax.training.step import (
            init_state,
            jit_train_step,
            make_optimizer,
            make_train_step,
        )

        bench = _bench()
        # benchmark.paper_model's m-RNN (dropout 0.5), without its throw-away parameters.
        model = make_model(
            {"compute_dtype": dtype, "dropout_rate": 0.5},
            {"name": "features", "features_dim": feature_dim},
            vocab_size,
        )
        mesh = sharding.make_mesh()
        tx = make_optimizer(ConfigDict(BENCH_TRAIN))
        first = batches[0]
        state = init_state(model, tx, 0, first["image"][:1], first["tokens"][:1, :-1])
        step = make_train_step(model, tx, 1e-6)
        self.flops = len(batches) * bench.flops_of(step, state, first)  # same shapes
        state = sharding.replicate(state, mesh)
        self.placed = [sharding.shard_batch(b, mesh) for b in batches]
        compiled = jit_train_step(step, mesh).lower(state, self.placed[0]).compile()
        analysis = compiled.memory_analysis()
        self.memory = None
        if analysis is not None:
            self.memory = int(
                analysis.argument_size_in_bytes
                + analysis.output_size_in_bytes
                - analysis.alias_size_in_bytes
                + analysis.temp_size_in_bytes
            )
        self.step, self.holder = compiled, [state]
        self.words = sum(int(np.sum(b["tokens"][:, 1:] != 0)) for b in batches)

    def run(self):
        """One step per batch (the state is donated and replaced); the last loss."""
        for batch in self.placed:
            self.holder[0], metrics = self.step(self.holder[0], batch)
        return metrics["loss"]


def paper_batches(check: Check, words: int) -> tuple[int, list[dict]]:
    """The batch size for ``words`` words a step and the train part's batches for it (the
    library's input pipeline; every caption 19 words and the end token)."""
    s = check.sizes
    batch = math.ceil(words / s["positions"])
    setting = {
        "vocab_size": s["vocab_size"],
        "feature_dim": s["feature_dim"],
        "batch_size": batch,
        "words": s["positions"] - 1,
    }
    return batch, _bench().training_batches(setting, s["train_batches"], s["positions"] - 1)


def part_train(check: Check, out: dict, clock: Clock) -> None:
    """Training step speed, FLOP rate, MFU and memory from 256 to 65,536 words a step."""
    import numpy as np

    s = check.sizes
    rows, skipped = out.setdefault("rows", []), out.setdefault("skipped", [])
    out.update(
        vocab_size=s["vocab_size"],
        feature_dim=s["feature_dim"],
        positions=s["positions"],
        steps_per_run=s["train_batches"],
        runs=s["runs"],
    )
    for words in s["train_words"]:
        batch, batches = None, None
        for dtype in ("float32", "bfloat16"):
            if clock.left() <= 0:
                skipped.append(f"{dtype}, {words} words")
                continue
            if batches is None:
                batch, batches = paper_batches(check, words)
            program = TrainProgram(s["vocab_size"], s["feature_dim"], dtype, batches)
            seconds = _median(program.run, s["runs"])
            loss = float(program.run())
            flop_rate = program.flops / seconds
            peak = check.peaks.get(dtype)
            rows.append(
                {
                    "dtype": dtype,
                    "batch": batch,
                    "words_per_step": program.words // len(batches),
                    "words_per_s": program.words / seconds,
                    "ms_per_step": 1e3 * seconds / len(batches),
                    "flops_per_step": program.flops / len(batches),
                    "flop_s": flop_rate,
                    "mfu": flop_rate / peak if peak else None,
                    "peak_bytes_in_use": _device_peak_bytes(),
                    "program_bytes": program.memory,
                    "loss_finite": bool(np.isfinite(loss)),
                }
            )
            if dtype == "float32" and words in s["torch_words"]:
                check.jax_runs[words] = program.run
            del program
            check.save()


# --- torch ---------------------------------------------------------------------------------


def _torch_trainer(vocab_size: int, feature_dim: int, device: str):
    """experiments/torch_mrnn.py's trainer with its model on ``device``; its ``place`` and
    ``step_placed`` keep host-to-device copies out of the timed steps."""
    from torch_mrnn import TorchTrainer

    return TorchTrainer(vocab_size, feature_dim, device=device)


def _torch_setup(out: dict) -> str:
    """The PyTorch device (CUDA where there is one), TF32 products like JAX's default."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # JAX's default float32 precision on NVIDIA GPUs is TF32; PyTorch's is full float32.
        # Both run at JAX's default: TF32 products.
        torch.set_float32_matmul_precision("high")
    out.update(
        torch_version=torch.__version__,
        device=device,
        device_name=torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        float32_products="TF32 (as JAX's default)" if device == "cuda" else "float32",
    )
    return device


def _torch_peak(device: str, reset: bool = False) -> int | None:
    import torch

    if device != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


def part_torch(check: Check, out: dict, clock: Clock) -> None:
    """PyTorch eager against the JAX step, float32, same batches, timed alternately."""
    s = check.sizes
    device = _torch_setup(out)
    rows, skipped = out.setdefault("rows", []), out.setdefault("skipped", [])
    check.save()
    for words in s["torch_words"]:
        if clock.left() <= 0:
            skipped.append(f"{words} words")
            continue
        batch, batches = paper_batches(check, words)
        run_jax = check.jax_runs.get(words)
        if run_jax is None:  # the train part did not get to it
            run_jax = TrainProgram(s["vocab_size"], s["feature_dim"], "float32", batches).run
            check.jax_runs[words] = run_jax
        trainer = _torch_trainer(s["vocab_size"], s["feature_dim"], device)
        placed = [trainer.place(b) for b in batches]
        _torch_peak(device, reset=True)
        seconds = _bench().interleaved_medians(
            {"jax": run_jax, "torch": lambda t=trainer, p=placed: [t.step_placed(b) for b in p]},
            s["runs"],
        )
        real = batch * s["positions"] * len(batches)
        rows.append(
            {
                "batch": batch,
                "words_per_step": real // len(batches),
                "jax_words_per_s": real / seconds["jax"],
                "torch_words_per_s": real / seconds["torch"],
                "jax_over_torch": seconds["torch"] / seconds["jax"],
                "torch_peak_bytes": _torch_peak(device),
            }
        )
        del trainer, placed, run_jax
        check.save()
    largest = max(s["torch_words"])  # kept for torch.compile's comparison
    check.jax_runs = {largest: check.jax_runs[largest]} if largest in check.jax_runs else {}


def part_torch_compile(check: Check, out: dict, clock: Clock) -> None:
    """``torch.compile`` of the PyTorch model at the largest size, against eager and JAX."""
    s = check.sizes
    backend = s["torch_compile_backend"]
    if backend is None:
        out["skipped"] = "not in --smoke"
        return
    import torch

    device = _torch_setup({})
    words = max(s["torch_words"])
    batch, batches = paper_batches(check, words)
    out.update(backend=backend, batch=batch, words_per_step=batch * s["positions"])
    run_jax = check.jax_runs.pop(words, None)
    if run_jax is None:
        run_jax = TrainProgram(s["vocab_size"], s["feature_dim"], "float32", batches).run
    trainer = _torch_trainer(s["vocab_size"], s["feature_dim"], device)
    trainer.model = torch.compile(trainer.model, backend=backend, dynamic=False)
    placed = [trainer.place(b) for b in batches]
    start = time.perf_counter()
    trainer.step_placed(placed[0])  # the compile (forward and backward)
    out["compile_s"] = time.perf_counter() - start
    check.save()
    seconds = _bench().interleaved_medians(
        {"jax": run_jax, "torch": lambda: [trainer.step_placed(b) for b in placed]}, s["runs"]
    )
    real = batch * s["positions"] * len(batches)
    out.update(
        jax_words_per_s=real / seconds["jax"],
        torch_compiled_words_per_s=real / seconds["torch"],
        jax_over_torch_compiled=seconds["torch"] / seconds["jax"],
    )


# --- decoding ------------------------------------------------------------------------------


def _decode_part(check: Check, out: dict, clock: Clock, beams: int) -> None:
    """Captions per second at each batch size (greedy for ``beams`` 1, else beam search)."""
    import jax.numpy as jnp

    from mrnn_jax import decode
    from mrnn_jax.model import MRNN

    s = check.sizes
    bench = _bench()
    model, params, features = bench.paper_model(s["vocab_size"], s["feature_dim"], "float32")
    words = s["decode_words"]
    out.update(vocab_size=s["vocab_size"], feature_dim=s["feature_dim"], max_words=words)
    if beams > 1:
        out["beam_size"] = beams
    rows, skipped = out.setdefault("rows", []), out.setdefault("skipped", [])
    for batch in s["decode_batches"]:
        if clock.left() <= 0:
            skipped.append(f"batch {batch}")
            continue
        images = jnp.asarray(features(batch))
        if beams == 1:
            fn = lambda x=images: decode.greedy(model, params, x, words)  # noqa: E731
        else:
            fn = lambda x=images: decode.beam(model, params, x, words, beams)  # noqa: E731
        seconds = _median(fn, s["runs"])
        # Matrix products if every step runs (a loop may stop early once all have ended).
        rows_per_step = batch * beams
        projection = model.apply(params, images[:1], method=MRNN.project_image)
        step_fn = decode.mrnn_step_fn(model, params, jnp.repeat(projection, rows_per_step, 0))
        carry = model.apply(params, rows_per_step, method=MRNN.initial_carry)
        per_step = bench.flops_of(step_fn, carry, jnp.zeros((rows_per_step,), jnp.int32))
        image = bench.flops_of(lambda x: model.apply(params, x, method=MRNN.project_image), images)
        flop_rate = (per_step * (words + 1) + image) / seconds
        peak = check.peaks.get("float32")
        rows.append(
            {
                "batch": batch,
                "captions_per_s": batch / seconds,
                "seconds": seconds,
                "flop_s": flop_rate,
                "mfu": flop_rate / peak if peak else None,
            }
        )
        check.save()


def part_greedy(check: Check, out: dict, clock: Clock) -> None:
    """Greedy captions per second, batch 1 to 4,096."""
    _decode_part(check, out, clock, 1)


def part_beam(check: Check, out: dict, clock: Clock) -> None:
    """Beam-3 captions per second, batch 1 to 4,096."""
    _decode_part(check, out, clock, check.sizes["beam_size"])


# --- retrieval -----------------------------------------------------------------------------


def part_retrieval(check: Check, out: dict, clock: Clock) -> None:
    """A Flickr8K-shaped set, a short training with the data on the device, then the full
    test split's retrieval scoring and metrics."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_f8k_") as data:
        _retrieval(check, out, clock, data)


def _retrieval(check: Check, out: dict, clock: Clock, data: str) -> None:
    import flickr8k_shaped
    import numpy as np

    from mrnn_jax import configs, sharding
    from mrnn_jax.data import load_dataset
    from mrnn_jax.data.pipeline import CaptionTable, batch_indices, batch_width
    from mrnn_jax.evaluation import retrieval
    from mrnn_jax.model import make_model
    from mrnn_jax.text.vocab import build_vocab
    from mrnn_jax.training.step import (
        bucket_widths,
        init_state,
        jit_device_data_step,
        make_optimizer,
        make_train_step,
    )

    s = check.sizes
    steps = s["retrieval_train_steps"]
    start = time.perf_counter()
    flickr8k_shaped.write(data)
    config = configs.load_config(
        "flickr8k",
        [
            f"dataset.data_dir={data}",
            f"dataset.features={os.path.join(data, 'features.npz')}",
            "encoder.features_dim=1280",
            f"train.batch_size={s['retrieval_batch']}",
            f"train.num_steps={steps}",
            f"train.warmup_steps={max(1, steps // 10)}",
        ],
    )
    splits = load_dataset(config.dataset, config.encoder, {"train", "test"}).splits
    out["data_s"] = time.perf_counter() - start
    vocab = build_vocab(splits["train"].records, config.dataset.min_count)
    out["vocab_size"] = len(vocab)
    check.save()

    # Training, as train_and_evaluate runs it with train.device_data=True.
    tc = config.train
    start = time.perf_counter()
    mesh = sharding.make_mesh()
    table = CaptionTable.build(splits["train"].records, vocab, config.dataset.max_words)
    inputs = np.asarray(splits["train"].inputs)
    model = make_model(config.model, config.encoder, len(vocab))
    tx = make_optimizer(tc)
    state = init_state(model, tx, tc.seed, inputs[:1], table.tokens[:1, :-1])
    state = sharding.replicate(state, mesh)
    device_data = sharding.replicate({"inputs": inputs, "tokens": table.tokens}, mesh)
    train_step = jit_device_data_step(make_train_step(model, tx, tc.l2_weight), mesh)
    widths = bucket_widths(config)
    losses = []
    for step in range(steps):
        indices = batch_indices(table, step, tc.batch_size, tc.seed, widths=widths)
        width = batch_width(table, step, tc.batch_size, tc.seed, 1, widths)
        state, metrics = train_step(state, device_data, sharding.shard_batch(indices, mesh), width)
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            losses.append([step + 1, metrics["loss"]])
    losses = [[n, float(loss)] for n, loss in losses]
    out.update(
        train_steps=steps,
        train_batch=tc.batch_size,
        train_s=time.perf_counter() - start,
        train_losses=losses,
    )
    del device_data
    check.save()

    # The test split: every image with its five captions.
    test = splits["test"]
    count = len(test.records) if s["retrieval_images"] is None else s["retrieval_images"]
    records, images = test.records[:count], np.asarray(test.inputs[:count])
    sentences = CaptionTable.build_uncut(records, vocab, config.dataset.max_words)
    out.update(images=len(records), sentences=len(sentences))
    params = {"params": state.params}
    runs = out.setdefault("runs", [])
    for sentence_tile, image_tile in s["retrieval_tiles"]:
        for attempt in ("first (compiles included)", "second"):
            if clock.left() <= 0:
                out.setdefault("skipped", []).append(f"{sentence_tile}x{image_tile} {attempt}")
                continue
            start = time.perf_counter()
            metrics, scores, _ = retrieval.evaluate_retrieval(
                model,
                params,
                sentences.tokens,
                sentences.image_index,
                images,
                sentence_tile=sentence_tile,
                image_tile=image_tile,
                mesh=mesh,
            )
            seconds = time.perf_counter() - start
            runs.append(
                {
                    "sentence_tile": sentence_tile,
                    "image_tile": image_tile,
                    "run": attempt,
                    "seconds": seconds,
                    "pairs_per_s": scores.size / seconds,
                    "finite": bool(np.isfinite(scores).all()),
                }
            )
            out["metrics"] = metrics
            check.save()


# --- shapes --------------------------------------------------------------------------------


def shapes_run(mode: str) -> dict:
    """The shapes part's training run (``SHAPES_RUNS[mode]``) at float32 ``highest``
    precision: its logged training losses and test perplexity."""
    import jax

    from mrnn_jax import configs
    from mrnn_jax.run_dir import RunDir
    from mrnn_jax.training.loop import train_and_evaluate

    name, overrides = SHAPES_RUNS[mode]
    config = configs.load_config(name, overrides)
    with (
        tempfile.TemporaryDirectory(prefix="gpu_check_shapes_") as workdir,
        jax.default_matmul_precision("highest"),
    ):
        start = time.perf_counter()
        results = train_and_evaluate(config, workdir, progress=False)
        seconds = time.perf_counter() - start
        with open(RunDir.at(workdir).metrics, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return {
        "config": name,
        "overrides": overrides,
        "losses": [[r["step"], r["loss"]] for r in rows if r["split"] == "train"],
        "test_perplexity": results["splits"]["test"]["perplexity"],
        "seconds": seconds,
    }


def compare_losses(
    run: list[list[float]], reference: list[list[float]]
) -> tuple[float, list[dict]]:
    """The largest relative deviation of ``run``'s losses from ``reference``'s at the same
    steps, and the rows of the comparison."""
    ref = {int(step): loss for step, loss in reference}
    rows = []
    for step, loss in run:
        if int(step) in ref:
            base = ref[int(step)]
            rows.append(
                {"step": int(step), "reference": base, "loss": loss, "rel": abs(loss - base) / base}
            )
    if len(rows) != len(ref):
        raise ValueError(f"steps logged {[r['step'] for r in rows]}, reference has {sorted(ref)}")
    return max(r["rel"] for r in rows), rows


def part_shapes(check: Check, out: dict, clock: Clock) -> None:
    """A short shapes training whose loss curve is compared with the CPU reference."""
    import jax

    mode = check.sizes["shapes"]
    with open(REFERENCE, encoding="utf-8") as f:
        reference = json.load(f)[mode]
    run = shapes_run(mode)
    if run["overrides"] != reference["overrides"] or run["config"] != reference["config"]:
        raise ValueError("the reference was made with other settings: run --make-reference")
    deviation, rows = compare_losses(run["losses"], reference["losses"])
    ppl, ref_ppl = run["test_perplexity"], reference["test_perplexity"]
    out.update(
        config=run["config"],
        overrides=run["overrides"],
        precision="float32, highest",
        platform=jax.devices()[0].platform,
        train_s=run["seconds"],
        reference_platform=reference["platform"],
        reference_jax=reference["jax"],
        reference_date=reference["date"],
        tolerance=TOLERANCE,
        max_rel_deviation=deviation,
        within_tolerance=deviation <= TOLERANCE,
        test_perplexity=ppl,
        reference_test_perplexity=ref_ppl,
        test_perplexity_rel_deviation=abs(ppl - ref_ppl) / ref_ppl,
        losses=rows,
    )


def make_reference() -> None:
    """Runs the shapes part's two runs here and writes experiments/gpu_check_reference.json."""
    import jax

    device = jax.devices()[0]
    reference = {
        "about": "CPU reference of experiments/gpu_check.py's shapes part (--make-reference): "
        "the logged mean training loss of each log window, float32 at 'highest' precision",
        "tolerance": TOLERANCE,
    }
    for mode in SHAPES_RUNS:
        run = shapes_run(mode)
        print(f"{mode}: {run['losses']}", flush=True)
        reference[mode] = {
            **run,
            "platform": device.platform,
            "device_kind": device.device_kind,
            "jax": jax.__version__,
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        }
    _write(REFERENCE, _dumps(reference) + "\n")
    print(f"wrote {REFERENCE}")


# --- Markdown --------------------------------------------------------------------------------


def _num(value: Any, spec: str = ",.1f") -> str:
    return "" if value is None else format(value, spec)


def _tflops(value: float | None) -> str:
    return "" if value is None else f"{value / 1e12:.4g}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _gib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def _status(part: dict) -> list[str]:
    lines = []
    for key in ("error", "timeout", "skipped"):
        if part.get(key):
            value = part[key]
            text = ", ".join(value) if isinstance(value, list) else str(value).splitlines()[0]
            lines.append(f"**{key}**: {text}")
    if "seconds" in part:
        lines.append(f"({part['seconds']:.1f} s)")
    return [" ".join(lines), ""] if lines else []


def markdown(report: dict) -> str:
    """The report as Markdown: one section and table per part."""
    meta = report.get("meta", {})
    versions = meta.get("versions", {})
    lines = [
        f"# GPU check{' (smoke: tiny sizes)' if meta.get('smoke') else ''}",
        "",
        f"{meta.get('date', '')}; {meta.get('machine', '')}; python {versions.get('python')}, "
        f"jax {versions.get('jax')}, flax {versions.get('flax')}, torch {versions.get('torch')}; "
        f"commit {meta.get('commit')}; {meta.get('elapsed_s', 0):.0f} s"
        f"{'' if meta.get('finished') else ' (not finished)'}",
        "",
    ]
    peak = report.get("peak")
    if peak is not None:
        lines += [
            "## peak",
            "",
            *_status(peak),
            f"{peak.get('device_kind')} x {peak.get('device_count')} ({peak.get('platform')}), "
            f"jax {peak.get('jax_version')}; jitted {peak.get('size')}^3 matrix product:",
            "",
            "| bfloat16 TFLOP/s | float32 (default precision) TFLOP/s | float32 highest TFLOP/s |",
            "|---|---|---|",
            f"| {_tflops(peak.get('bfloat16_flops'))} | {_tflops(peak.get('float32_flops'))} | "
            f"{_tflops(peak.get('float32_highest_flops'))} |",
            "",
        ]
    train = report.get("train")
    if train is not None:
        lines += [
            "## train",
            "",
            *_status(train),
            f"The library's training step, vocabulary {train.get('vocab_size')}, "
            f"{train.get('feature_dim')}-d features, {train.get('positions')} positions a "
            "caption; MFU against the same-run peak of the dtype; memory in GiB (device peak "
            "so far in the process / the compiled program's own).",
            "",
            "| dtype | batch | words/step | words/s | ms/step | TFLOP/s | MFU | peak GiB | "
            "program GiB |",
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {r['dtype']} | {r['batch']} | {r['words_per_step']:,} | "
                f"{_num(r['words_per_s'], ',.0f')} | {_num(r['ms_per_step'], '.3f')} | "
                f"{_tflops(r['flop_s'])} | {_pct(r['mfu'])} | {_gib(r['peak_bytes_in_use'])} | "
                f"{_gib(r['program_bytes'])} |"
                for r in train.get("rows", [])
            ),
            "",
        ]
    torch_part = report.get("torch")
    if torch_part is not None:
        lines += [
            "## torch",
            "",
            *_status(torch_part),
            f"PyTorch {torch_part.get('torch_version')} eager on {torch_part.get('device')} "
            f"({torch_part.get('float32_products')}), the same batches, timed alternately with "
            "the JAX float32 step.",
            "",
            "| batch | words/step | JAX words/s | PyTorch words/s | JAX / PyTorch | "
            "PyTorch peak GiB |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['batch']} | {r['words_per_step']:,} | {_num(r['jax_words_per_s'], ',.0f')}"
                f" | {_num(r['torch_words_per_s'], ',.0f')} | {_num(r['jax_over_torch'], '.2f')}x"
                f" | {_gib(r['torch_peak_bytes'])} |"
                for r in torch_part.get("rows", [])
            ),
            "",
        ]
        compiled = torch_part.get("compile")
        if compiled:
            lines += ["torch.compile:", "", *_status(compiled)]
            if "torch_compiled_words_per_s" in compiled:
                lines += [
                    f"{compiled['words_per_step']:,} words/step, backend {compiled['backend']}: "
                    f"compile {compiled['compile_s']:.1f} s, "
                    f"{compiled['torch_compiled_words_per_s']:,.0f} words/s against JAX's "
                    f"{compiled['jax_words_per_s']:,.0f} (JAX / compiled "
                    f"{compiled['jax_over_torch_compiled']:.2f}x)",
                    "",
                ]
    for name in ("greedy", "beam"):
        part = report.get(name)
        if part is None:
            continue
        lines += [
            f"## {name}",
            "",
            *_status(part),
            f"Vocabulary {part.get('vocab_size')}, {part.get('feature_dim')}-d features, at "
            f"most {part.get('max_words')} words, float32; FLOP rate as if every step ran.",
            "",
            "| batch | captions/s | s/call | TFLOP/s | MFU |",
            "|---|---|---|---|---|",
            *(
                f"| {r['batch']} | {_num(r['captions_per_s'])} | {_num(r['seconds'], '.4f')} | "
                f"{_tflops(r['flop_s'])} | {_pct(r['mfu'])} |"
                for r in part.get("rows", [])
            ),
            "",
        ]
    ret = report.get("retrieval")
    if ret is not None:
        lines += [
            "## retrieval",
            "",
            *_status(ret),
            f"Flickr8K-shaped set (vocabulary {ret.get('vocab_size')}, 1,280-d features): "
            f"{ret.get('train_steps')} training steps of batch {ret.get('train_batch')} with the "
            f"data on the device ({_num(ret.get('train_s'))} s); then "
            f"{ret.get('sentences')} sentences x {ret.get('images')} images scored.",
            "",
            "| tiles (sentences x images) | run | seconds | pairs/s |",
            "|---|---|---|---|",
            *(
                f"| {r['sentence_tile']} x {r['image_tile']} | {r['run']} | "
                f"{r['seconds']:.2f} | {r['pairs_per_s']:,.0f} |"
                for r in ret.get("runs", [])
            ),
            "",
        ]
        if ret.get("metrics"):
            lines += [
                "| direction | R@1 | R@5 | R@10 | median rank |",
                "|---|---|---|---|---|",
                *(
                    f"| {direction} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | "
                    f"{m['median rank']:g} |"
                    for direction, m in ret["metrics"].items()
                ),
                "",
            ]
    shapes = report.get("shapes")
    if shapes is not None:
        lines += ["## shapes", "", *_status(shapes)]
        if "max_rel_deviation" in shapes:
            verdict = "within" if shapes["within_tolerance"] else "NOT within"
            lines += [
                f"`{shapes['config']}` config, float32 at highest precision on "
                f"{shapes['platform']}, against the {shapes['reference_platform']} reference "
                f"(jax {shapes['reference_jax']}, {shapes['reference_date']}): largest relative "
                f"deviation of a logged training loss {shapes['max_rel_deviation']:.2e}, "
                f"{verdict} the tolerance {shapes['tolerance']:g}; test perplexity "
                f"{shapes['test_perplexity']:.4f} against "
                f"{shapes['reference_test_perplexity']:.4f}.",
                "",
                "| step | reference loss | loss | relative deviation |",
                "|---|---|---|---|",
                *(
                    f"| {r['step']} | {r['reference']:.5f} | {r['loss']:.5f} | {r['rel']:.2e} |"
                    for r in shapes["losses"]
                ),
                "",
            ]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------

RUNNERS = {
    "peak": part_peak,
    "train": part_train,
    "torch": part_torch,
    "greedy": part_greedy,
    "beam": part_beam,
    "retrieval": part_retrieval,
    "shapes": part_shapes,
}


def main(argv: list[str] | None = None) -> int:
    """Runs the check (or the reference, or the import check); returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU, < 1 minute)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--deadline", type=float, help="overall seconds (default 420; smoke 240)")
    parser.add_argument(
        "--make-reference", action="store_true", help=f"write {os.path.relpath(REFERENCE, ROOT)}"
    )
    parser.add_argument(
        "--check-imports", action="store_true", help="only say which parts could not run"
    )
    args = parser.parse_args(argv)
    missing = check_imports(tuple(args.only))
    line = missing_line(missing)
    if line:
        print(line, flush=True)
    if args.check_imports:
        return 0
    if args.make_reference:
        if any(m in missing for m in NEEDS["shapes"]):
            return 1
        make_reference()
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    sizes = _sizes(args.smoke)
    check = Check(args.out, sizes, args.smoke, args.deadline or sizes["deadline"])
    check.missing = missing
    meta = check.report["meta"]
    meta.update(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        smoke=args.smoke,
        argv=sys.argv[1:] if argv is None else argv,
        machine=f"{platform.node()}, {platform.machine()}, {os.cpu_count()} cores",
        versions=_versions(),
        commit=_git_commit(),
        missing_modules=missing,
        deadline_s=check.deadline,
        finished=False,
    )
    if "jax" not in missing:
        import jax

        meta["devices"] = [f"{d.platform}: {d.device_kind}" for d in jax.devices()]
    if not any(m in missing for m in LIBRARY):
        import mrnn_jax

        meta["mrnn_jax"] = os.path.dirname(mrnn_jax.__file__)  # the source tree's, not a copy
    check.save()
    signal.signal(signal.SIGTERM, _terminate)
    budgets = sizes["budgets"]
    try:
        for name in PARTS:
            if name in args.only:
                check.run(name, RUNNERS[name], budgets[name])
        if "torch" in args.only and "torch" in check.report and not check.missing.get("torch"):
            target = check.report["torch"].setdefault("compile", {})
            check.run("torch_compile", part_torch_compile, budgets["torch_compile"], target)
        meta["finished"] = True
    except Terminated:
        meta["terminated"] = "SIGTERM"
    finally:
        check.save()
    print(markdown(check.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
