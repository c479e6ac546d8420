"""The benchmark suite (make bench): how fast each part runs, as a share of the machine's peak.

For training (tokens/s), greedy and beam decoding (captions/s), retrieval scoring (pairs/s)
and the encoders (images/s): the median of --runs timed runs, the FLOP rate counted over the
model's matrix products only (dot products and convolutions found in the jitted program,
scan bodies times their length; embedding lookups are gathers, not FLOPs), and its ratio to
the machine's matrix-multiply peak measured in the same run (a jitted float32 2048x2048
product; bfloat16 too on a GPU). Paper-sized m-RNN (embedding 128, recurrent 256,
multimodal 512), a 10,000-word vocabulary, 4096-d image features, random weights.

    python experiments/benchmark.py [--quick] [--json results/benchmark.json]
        [--markdown results/benchmark.md] [--dtype bfloat16] [--only train decode ...]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared timing helper
from timing import median_time  # noqa: E402

from mrnn_jax import decode, logs, sharding
from mrnn_jax.encoders.pretrained import ARCHITECTURES, PretrainedEncoder
from mrnn_jax.evaluation import retrieval
from mrnn_jax.files import write_json_atomic, write_text_atomic
from mrnn_jax.model import MRNN, make_model
from mrnn_jax.text.vocab import END_ID, START_ID, UNK_ID
from mrnn_jax.training.step import init_state, jit_train_step, make_optimizer, make_train_step

PARTS = ("train", "scst", "decode", "retrieval", "encoders")


# --- counting and timing -----------------------------------------------------------------


def matmul_flops(jaxpr) -> float:
    """FLOPs (2 per multiply-add) of the dot products and convolutions of a jaxpr, with
    sub-programs (jit, scan bodies times their length, custom derivatives) included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += (
                2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
            )
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        times = eqn.params.get("length", 1) if name == "scan" else 1
        if name == "cond":  # one branch runs: count the costliest
            total += max(matmul_flops(b.jaxpr) for b in eqn.params["branches"])
            continue
        # (a while loop's body is counted once: callers multiply by its trip count)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += times * matmul_flops(inner)
    return total


def flops_of(fn: Callable, *args) -> float:
    """Matrix-product FLOPs of one call of ``fn(*args)``."""
    return matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn()`` over ``runs`` runs, after one warm-up (the compile)."""
    return median_time(fn, runs)[0]


def matmul_peak(dtype, runs: int, size: int = 2048) -> float:
    """FLOP/s of a jitted ``size x size`` matrix product in ``dtype``."""
    keys = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(keys[0], (size, size), dtype)
    b = jax.random.normal(keys[1], (size, size), dtype)
    product = jax.jit(jnp.matmul)
    return 2.0 * size**3 / median_seconds(lambda: product(a, b), runs)


# --- the parts -----------------------------------------------------------------------------


def paper_model(
    vocab_size: int, feature_dim: int, dtype: str, dropout_rate: float = 0.0
) -> tuple[MRNN, dict, Callable]:
    """The paper-sized m-RNN with random weights, and a maker of random image features."""
    model = make_model(
        {"compute_dtype": dtype, "dropout_rate": dropout_rate},
        {"name": "features", "features_dim": feature_dim},
        vocab_size,
    )
    features = lambda n: np.random.default_rng(0).standard_normal((n, feature_dim), np.float32)
    params = model.init(jax.random.PRNGKey(0), features(1), np.zeros((1, 2), np.int32))
    return model, params, features


def sentences(count: int, words: int, vocab_size: int) -> np.ndarray:
    """Random captions of exactly ``words`` words: ``[count, words + 2]`` with start and end."""
    tokens = np.empty((count, words + 2), np.int32)
    tokens[:, 0], tokens[:, -1] = START_ID, END_ID
    tokens[:, 1:-1] = np.random.default_rng(2).integers(UNK_ID + 1, vocab_size, (count, words))
    return tokens


SETTINGS = {
    # Real Flickr8K: 2,539 words at 5 occurrences, 1,280-d features (e.g. EfficientNet-B0
    # pooled), batch 128, caption lengths drawn like Flickr8K's, in the default config's
    # length buckets.
    "real-data": {"vocab_size": 2539, "feature_dim": 1280, "batch_size": 128, "words": None},
    # The paper: 10,000 words, 4,096-d fc7 features, batch 256, every caption 20 words.
    "paper": {"vocab_size": 10_000, "feature_dim": 4096, "batch_size": 256, "words": 20},
}


def training_batches(setting: dict, count: int, max_words: int = 20) -> list[dict]:
    """``count`` training batches of a setting, made by the library's input pipeline."""
    from flickr8k_shaped import caption_lengths

    from mrnn_jax.configs import default
    from mrnn_jax.data.pipeline import CaptionTable, train_batch

    rng = np.random.default_rng(0)
    size, vocab_size = setting["batch_size"], setting["vocab_size"]
    captions = size * count
    if setting["words"] is None:
        lengths = np.minimum(caption_lengths(captions, rng), max_words)
        widths = tuple(w + 2 for w in default.get_config().train.length_buckets)
    else:
        lengths, widths = np.full(captions, setting["words"]), ()
    tokens = np.zeros((captions, max_words + 2), np.int32)
    for row, n in enumerate(lengths):
        tokens[row, 0], tokens[row, n + 1] = START_ID, END_ID
        tokens[row, 1 : n + 1] = rng.integers(UNK_ID + 1, vocab_size, n)
    table = CaptionTable(np.arange(captions, dtype=np.int32), tokens, np.ones(captions, np.int64))
    features = rng.standard_normal((captions, setting["feature_dim"]), np.float32)
    return [train_batch(table, features, step, size, 0, widths=widths) for step in range(count)]


def bench_train(args) -> list[dict]:
    """Training steps at each setting of --settings, beside the PyTorch eager reference.

    Both run the same batches (``--train-batches`` of them per timed run): the JAX step padded
    to its length bucket (one compile per width), PyTorch cut to each batch's own longest
    caption. The two alternate run by run, so that both see the same machine load.
    """
    from torch_mrnn import TorchTrainer

    rows = []
    plans = [(name, size) for name in args.settings for size in args.batch_size or [None]]
    for name, size in plans:
        setting = dict(SETTINGS[name])
        if args.quick:
            setting.update(vocab_size=1000, feature_dim=256, batch_size=32)
        if size:
            setting["batch_size"] = size
        batches = training_batches(setting, args.train_batches)
        words = sum(int(np.sum(b["tokens"] != 0)) - len(b["tokens"]) for b in batches)
        positions = sum(b["tokens"].size - len(b["tokens"]) for b in batches)
        # PyTorch pads each batch to its own longest caption.
        torch_positions = sum(
            len(b["tokens"]) * (int(np.sum(b["tokens"] != 0, axis=1).max()) - 1) for b in batches
        )
        run_jax, flops = jax_training(setting, batches, args.dtype)
        torch_trainer = TorchTrainer(setting["vocab_size"], setting["feature_dim"])
        seconds = interleaved_medians(
            {"jax": run_jax, "torch": functools.partial(torch_run, torch_trainer, batches)},
            args.runs,
        )
        label = (
            f"{name}: vocabulary {setting['vocab_size']:,}, {setting['feature_dim']:,}-d, "
            f"batch {setting['batch_size']}, {args.dtype}"
        )
        reference = words / seconds["torch"]
        for who, title in (("jax", "train step"), ("torch", "train step, PyTorch eager")):
            rate = words / seconds[who]
            result = row(title, label, rate, "words/s", flops / seconds["jax"])
            result["padded_rate"] = (positions if who == "jax" else torch_positions) / seconds[who]
            result["ratio"] = rate / reference
            if who == "torch":
                result["flops"] = None
            rows.append(result)
    return rows


def torch_run(trainer, batches: list[dict]) -> float:
    """The PyTorch reference's steps over ``batches``; the last loss."""
    return [trainer.step(batch) for batch in batches][-1]


def jax_training(setting: dict, batches: list[dict], dtype: str) -> tuple[Callable, float]:
    """A run over ``batches`` with the library's jitted train step, and its matrix FLOPs."""
    model, _, _ = paper_model(setting["vocab_size"], setting["feature_dim"], dtype, 0.5)
    mesh = sharding.make_mesh()
    config = ConfigDict(
        {
            "learning_rate": 1e-3,
            "warmup_steps": 10,
            "num_steps": 1000,
            "final_learning_rate_fraction": 0.05,
            "grad_clip_norm": 5.0,
        }
    )
    tx = make_optimizer(config)
    first = batches[0]
    state = init_state(model, tx, 0, first["image"][:1], first["tokens"][:1, :-1])
    step = make_train_step(model, tx, 1e-6)
    flops = sum(flops_of(step, state, b) for b in batches)
    holder = [sharding.replicate(state, mesh)]
    jitted = jit_train_step(step, mesh)
    placed = [sharding.shard_batch(b, mesh) for b in batches]

    def run():
        for batch in placed:
            holder[0], metrics = jitted(holder[0], batch)
        return metrics["loss"]

    return run, flops


def interleaved_medians(runs: dict[str, Callable[[], object]], count: int) -> dict[str, float]:
    """Median wall time of each of ``runs`` over ``count`` rounds, after a warm-up round;
    each round times every run once, one after the other."""
    times = {name: [] for name in runs}
    for round_ in range(count + 1):
        for name, fn in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def scst_corpus(vocab_size: int, images: int, rng: np.random.Generator) -> tuple[list, list]:
    """A vocabulary and ``images`` training images' five references each: Flickr8K's caption
    lengths, words drawn by Zipf's law (what the reward's document frequencies are of)."""
    from flickr8k_shaped import caption_lengths

    vocabulary = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 4)]
    ranks = np.arange(1, vocab_size - 3, dtype=np.float64)
    p = (1.0 / ranks) / np.sum(1.0 / ranks)
    lengths = caption_lengths(images * 5, rng).reshape(images, 5)
    references = [
        [" ".join(vocabulary[4 + i] for i in rng.choice(len(p), n, p=p)) for n in row]
        for row in lengths
    ]
    return vocabulary, references


def bench_scst(args) -> list[dict]:
    """Self-critical training steps (real-data sizes: 2,539 words, 1,280-d features, 128
    images x 5 samples, 16 words) beside the PyTorch reference step of self-critical.pytorch's
    kind (experiments/torch_mrnn.py TorchScst: a Python sampling loop, CIDEr-D in Python),
    on the same batches and references, timed alternately: samples per second, and the
    reward's share of each step."""
    from torch_mrnn import TorchScst

    from mrnn_jax.text.vocab import Vocabulary
    from mrnn_jax.training import scst

    vocab_size, feature_dim, images, samples, words = 2539, 1280, 128, 5, 16
    if args.quick:
        vocab_size, feature_dim, images = 1000, 256, 16
    rng = np.random.default_rng(0)
    vocabulary, references = scst_corpus(vocab_size, 2000, rng)
    batches = [
        {
            "image": rng.standard_normal((images, feature_dim), np.float32),
            "image_index": rng.integers(0, len(references), images).astype(np.int32),
        }
        for _ in range(args.train_batches)
    ]
    model, _, _ = paper_model(vocab_size, feature_dim, args.dtype)
    options = scst.ScstOptions(samples=samples, max_words=words)
    reward = scst.HostReward(Vocabulary(tuple(vocabulary), min_count=1), references)
    tx = make_optimizer(
        ConfigDict(
            {
                "learning_rate": options.learning_rate,
                "warmup_steps": 0,
                "num_steps": 1000,
                "final_learning_rate_fraction": 1.0,
                "grad_clip_norm": 5.0,
            }
        )
    )
    mesh = sharding.make_mesh()
    state = init_state(model, tx, 0, batches[0]["image"][:1], np.zeros((1, 2), np.int32))
    holder = [sharding.replicate(state, mesh)]
    jitted = jit_train_step(scst.make_scst_step(model, tx, options, reward, 1e-6), mesh)
    placed = [sharding.shard_batch(b, mesh) for b in batches]
    reward_seconds = {"jax": [], "torch": []}

    def run_jax():
        for batch in placed:
            holder[0], metrics = jitted(holder[0], batch)
            reward_seconds["jax"].append(metrics["reward_seconds"])
        return metrics["loss"]

    trainer = TorchScst(feature_dim, vocabulary, references, samples=samples, max_words=words)
    torch_placed = [
        trainer.place({"image": b["image"], "image_id": b["image_index"]}) for b in batches
    ]

    def run_torch():
        for placed_batch in torch_placed:
            reward_seconds["torch"].append(trainer.step_placed(placed_batch)["reward_seconds"])
        return 0.0

    seconds = interleaved_medians({"jax": run_jax, "torch": run_torch}, args.runs)
    label = (
        f"vocabulary {vocab_size:,}, {feature_dim:,}-d, {images} images x {samples} samples, "
        f"{words} words, {args.dtype}"
    )
    per_run = images * samples * len(batches)
    rows = []
    for who, title in (("jax", "SCST step"), ("torch", "SCST step, PyTorch (self-critical way)")):
        result = row(title, label, per_run / seconds[who], "samples/s", None)
        result["ratio"] = seconds["torch"] / seconds[who]
        spent = float(np.sum([float(x) for x in reward_seconds[who]]))
        steps = len(reward_seconds[who])
        result["reward_share"] = spent / steps / (seconds[who] / len(batches))
        rows.append(result)
    return rows


def bench_decode(args) -> list[dict]:
    """Greedy and beam decoding: captions per second (all --words + 1 steps counted), beside
    the reference: a batch-1 beam search in a Python loop around a jitted step of the same
    model (``bench_decode.python_loop_beam``, the authors' TF-mRNN way), timed alternately."""
    from bench_decode import python_loop_beam

    model, params, features = paper_model(args.vocab_size, args.feature_dim, args.dtype)
    rows = []
    images = jnp.asarray(features(args.decode_batch))
    steps = args.words + 1
    one = np.asarray(images[0])
    loop = lambda: python_loop_beam(model, params, one, args.beam, args.words)  # noqa: E731
    reference = median_seconds(loop, args.runs)
    for name, beams in (("greedy", 1), (f"beam {args.beam}", args.beam)):
        rows_per_step = args.decode_batch * beams
        projection = model.apply(params, images[:1], method=MRNN.project_image)
        step_fn = decode.mrnn_step_fn(model, params, jnp.repeat(projection, rows_per_step, axis=0))
        carry = model.apply(params, rows_per_step, method=MRNN.initial_carry)
        per_step = flops_of(step_fn, carry, jnp.zeros((rows_per_step,), jnp.int32))
        image_flops = flops_of(lambda x: model.apply(params, x, method=MRNN.project_image), images)
        if beams == 1:
            fn = lambda: decode.greedy(model, params, images, args.words)
        else:
            fn = lambda: decode.beam(model, params, images, args.words, args.beam)
        seconds = median_seconds(fn, args.runs)
        rows.append(
            row(
                f"{name} decoding",
                f"batch {args.decode_batch}, {args.words} words, {args.dtype}",
                args.decode_batch / seconds,
                "captions/s",
                (per_step * steps + image_flops) / seconds,
            )
        )
        rows[-1]["ratio"] = args.decode_batch / seconds * reference
    rows.append(
        row(
            f"beam {args.beam} decoding, Python loop",
            f"batch 1, {args.words} words, {args.dtype}",
            1 / reference,
            "captions/s",
            None,
        )
    )
    rows[-1]["ratio"] = 1.0
    return rows


def bench_retrieval(args) -> list[dict]:
    """Scoring log P(S | I) for every (sentence, image) pair: pairs per second."""
    model, params, features = paper_model(args.vocab_size, args.feature_dim, args.dtype)
    tokens = sentences(args.retrieval_size, args.words, args.vocab_size)
    images = features(args.retrieval_size)
    s_tile, i_tile = 16, 32
    words_part, targets, mask = retrieval._sentence_part(model, params, tokens[:s_tile])
    projection = retrieval._image_part(model, params, images[:i_tile])
    tile = flops_of(
        lambda *a: retrieval._tile_scores(model, params, *a), words_part, targets, mask, projection
    )
    sentence = flops_of(lambda t: retrieval._sentence_part(model, params, t), tokens[:s_tile])
    image = flops_of(lambda x: retrieval._image_part(model, params, x), images[:i_tile])
    n = args.retrieval_size
    total = tile * (n / s_tile) * (n / i_tile) + sentence * n / s_tile + image * n / i_tile
    seconds = median_seconds(
        lambda: retrieval.score_matrix(model, params, tokens, images), args.runs
    )
    return [
        row(
            "retrieval scoring",
            f"{n} sentences x {n} images, {args.words} words, {args.dtype}",
            n * n / seconds,
            "pairs/s",
            total / seconds,
        )
    ]


def bench_encoders(args) -> list[dict]:
    """The CNN ports on 224x224 images: images per second."""
    rows = []
    for name in ARCHITECTURES:
        encoder = PretrainedEncoder(architecture=name)
        images = np.random.default_rng(0).integers(
            0, 256, (args.encoder_batch, 224, 224, 3), dtype=np.uint8
        )
        variables = encoder.init(jax.random.PRNGKey(0), images[:1])
        apply = jax.jit(encoder.apply)
        flops = flops_of(encoder.apply, variables, images)
        seconds = median_seconds(lambda f=apply, v=variables, x=images: f(v, x), args.runs)
        rows.append(
            row(
                f"{name} encoder",
                f"batch {args.encoder_batch}, 224x224",
                args.encoder_batch / seconds,
                "images/s",
                flops / seconds,
            )
        )
    return rows


def row(name: str, setting: str, rate: float, unit: str, flop_rate: float | None) -> dict:
    """One result line."""
    return {"name": name, "setting": setting, "rate": rate, "unit": unit, "flops": flop_rate}


def _cells(result: dict, sep: str, table: bool = False) -> str:
    """A result's optional figures (padded rate, ratio, FLOP rate, share of peak) as text:
    every one in table cells, the known ones in a printed line."""
    padded, ratio = result.get("padded_rate"), result.get("ratio")
    flops, share = result["flops"], result.get("share_of_peak")
    reward = result.get("reward_share")
    cells = [
        ("padded", None if padded is None else f"{padded:,.0f} positions/s"),
        ("ratio", None if ratio is None else f"{ratio:.2f}x"),
        ("flops", None if flops is None else f"{flops / 1e9:.1f} GFLOP/s"),
        ("share", None if share is None else f"{100 * share:.0f}% of peak"),
    ]
    if reward is not None and not table:
        cells.append(("reward", f"reward {100 * reward:.0f}% of the step"))
    if table:
        return sep + sep.join("" if text is None else text.split(" ")[0] for _, text in cells)
    return "".join(sep + text for _, text in cells if text is not None)


# --- the run -----------------------------------------------------------------------------


def main() -> None:
    """Runs the chosen parts; prints a Markdown table; writes JSON and Markdown on request."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median counts")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="compute dtype of the m-RNN's matrix products",
    )
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--feature-dim", type=int, default=4096)
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=tuple(SETTINGS),
        default=list(SETTINGS),
        help="training sizes: real-data (Flickr8K) and paper",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=None,
        help="training captions per step instead of the settings' own; several values sweep "
        "(a GPU's MFU by batch size)",
    )
    parser.add_argument("--train-batches", type=int, default=4, help="training steps per timed run")
    parser.add_argument("--words", type=int, default=20, help="words per caption (decoding)")
    parser.add_argument("--decode-batch", type=int, default=256, help="images per decode batch")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--retrieval-size", type=int, default=128, help="sentences = images")
    parser.add_argument("--encoder-batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 runs: a smoke test")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)
    if args.quick:
        args.runs, args.train_batches, args.decode_batch = 2, 2, 8
        args.retrieval_size, args.encoder_batch, args.vocab_size = 32, 1, 1000

    device = jax.devices()[0]
    peaks = {"float32": matmul_peak(jnp.float32, args.runs)}
    if device.platform == "gpu" or args.dtype == "bfloat16":
        peaks["bfloat16"] = matmul_peak(jnp.bfloat16, args.runs)
    rows = []
    benches = {
        "train": bench_train,
        "scst": bench_scst,
        "decode": bench_decode,
        "retrieval": bench_retrieval,
        "encoders": bench_encoders,
    }
    for part in args.only:
        for result in benches[part](args):
            peak = peaks["bfloat16" if "bfloat16" in result["setting"] else "float32"]
            flops = result["flops"]
            result["share_of_peak"] = None if flops is None else flops / peak
            rows.append(result)
            print(
                f"{result['name']} ({result['setting']}): {result['rate']:,.1f} "
                f"{result['unit']}{_cells(result, ', ')}",
                flush=True,
            )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {device.platform} "
        f"({device.device_kind}), {jax.device_count()} device(s)"
    )
    lines = [
        f"Machine: {machine}; {time.strftime('%Y-%m-%d')}; median of {args.runs} runs; "
        "matrix-multiply peak (jitted 2048x2048): "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()),
        "",
        "Training speed counts real words (the end token included, padding not); "
        "x reference: the speed over the reference's (PyTorch eager for training and, for "
        "SCST, its self-critical.pytorch-style step, measured alternately in this run; the "
        "batch-1 Python-loop beam search for decoding).",
        "",
        "| benchmark | setting | speed | padded positions/s | x reference | "
        "GFLOP/s (matrix products) | share of peak |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['name']} | {r['setting']} | {r['rate']:,.1f} {r['unit']}"
            f"{_cells(r, ' | ', table=True)} |"
            for r in rows
        ),
    ]
    lines += [
        f"\n{r['name']}: the reward (CIDEr-D) is {100 * r['reward_share']:.0f}% of the step."
        for r in rows
        if r.get("reward_share") is not None
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if args.json:
        write_json_atomic(
            args.json,
            {
                "machine": machine,
                "date": time.strftime("%Y-%m-%d"),
                "runs": args.runs,
                "peaks": peaks,
                "rows": rows,
            },
        )
    if args.markdown:
        write_text_atomic(args.markdown, table + "\n")


if __name__ == "__main__":
    main()
