"""Flickr8K-shaped timing of two code trees side by side: a training run and retrieval scoring.

On the set that ``flickr8k_shaped.py`` writes (30,000 training captions of 6,000 images,
Flickr8K's caption lengths, 1,280-d features, a 2,539-word vocabulary), each ``--repo`` (a
checkout of this project, e.g. main before a change and after it) is timed in its own
process, one after the other in the same sitting:

* training: ``mrnn train --config flickr8k`` for ``--steps`` steps (validation at the end
  only); the seconds per step after the first log window (so compiles are left out) and the
  seconds of one validation evaluation, read from ``metrics.jsonl``;
* retrieval: ``retrieval.score_matrix`` of ``--sentences`` test sentences (a seeded sample,
  encoded to the split's longest, as ``mrnn_jax.pages.retrieval_page`` does) against
  ``--images`` test images, with random weights (timing only): pairs per second.

Then both are extrapolated to what a user runs: ``make train DATASET=flickr8k`` (the
tree's own number of steps and validations, or the best step plus patience when the tree
stops early) and the full 1,000 x 5,000 test scoring. A benchmark that prints numbers.

    python experiments/bench_flickr8k.py --data /tmp/f8k --repo /tmp/base --repo .
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from mrnn_jax import logs
from mrnn_jax.run_dir import RunDir

HERE = os.path.dirname(os.path.abspath(__file__))

RETRIEVAL = r"""
import json, sys, time
import jax, numpy as np
import mrnn_jax
from mrnn_jax import configs
from mrnn_jax.evaluation import retrieval
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable
from mrnn_jax.model import make_model
from mrnn_jax.text.vocab import build_vocab
data, sentences, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = configs.load_config("flickr8k", [f"dataset.data_dir={data}",
    f"dataset.features={data}/features.npz", "encoder.features_dim=1280"])
splits = load_dataset(config.dataset, config.encoder, {"train", "test"}).splits
vocab = build_vocab(splits["train"].records, config.dataset.min_count)
table = CaptionTable.build_uncut(splits["test"].records, vocab, config.dataset.max_words)
rows = np.sort(np.random.default_rng(0).choice(len(table), sentences, replace=False))
tokens, inputs = table.tokens[rows], np.asarray(splits["test"].inputs[:images])
model = make_model(config.model, config.encoder, len(vocab))
params = model.init(jax.random.PRNGKey(0), inputs[:1], tokens[:1, :-1])
retrieval.score_matrix(model, params, tokens[:16], inputs[:32])  # compile
start = time.perf_counter()
retrieval.score_matrix(model, params, tokens, inputs)
seconds = time.perf_counter() - start
print(json.dumps({"pairs_per_second": sentences * images / seconds, "seconds": seconds,
                  "width": int(tokens.shape[1])}))
"""


def run(repo: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``repo`` (``-m`` and ``-c`` import from the working directory
    first) with ``repo`` on the import path."""
    repo = os.path.abspath(repo)
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, cwd=repo, **kwargs
    )
    if result.returncode:
        raise SystemExit(f"{repo}: {' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")
    return result


def time_training(repo: str, data: str, steps: int, log_every: int) -> dict:
    """Seconds per training step and per validation evaluation of a shortened run."""
    with tempfile.TemporaryDirectory() as workdir:
        overrides = [
            "encoder.features_dim=1280",
            f"train.num_steps={steps}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            f"train.log_every={log_every}",
            "eval.max_decode_words=1",
        ]
        run(repo, ["-m", "mrnn_jax", "train", "--config", "flickr8k", "--workdir", workdir,
                   "--no-progress", "--data-dir", data, "--features",
                   os.path.join(data, "features.npz"), *overrides])  # fmt: skip
        with open(RunDir.at(workdir).metrics, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        with open(RunDir.at(workdir).config, encoding="utf-8") as f:
            config = json.load(f)
    train = [r for r in rows if r["split"] == "train"]
    val = next(r for r in rows if r["split"] == "val")
    first, last = train[0], train[-1]
    return {
        "seconds_per_step": (last["time"] - first["time"]) / (last["step"] - first["step"]),
        "seconds_per_validation": val["time"] - last["time"],
        "patience": config["train"].get("patience", 0),
    }


def main() -> None:
    """Times every --repo; prints the figures and the extrapolations."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the set's folder (written if missing)")
    parser.add_argument("--repo", action="append", required=True, help="a code tree to time")
    parser.add_argument("--steps", type=int, default=200, help="training steps timed")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument(
        "--best-step", type=int, default=1500, help="Flickr8K's best step (real run)"
    )
    parser.add_argument("--num-steps", type=int, default=5000, help="flickr8k's train.num_steps")
    parser.add_argument("--eval-every", type=int, default=250, help="flickr8k's eval_every")
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)
    if not os.path.isfile(os.path.join(args.data, "features.npz")):
        sys.path.insert(0, HERE)
        import flickr8k_shaped

        flickr8k_shaped.write(args.data)

    results = {}
    for repo in args.repo:
        timing = time_training(repo, args.data, args.steps, args.log_every)
        code = RETRIEVAL + f"\nassert mrnn_jax.__file__.startswith({os.path.abspath(repo)!r})"
        out = run(repo, ["-c", code, args.data, str(args.sentences), str(args.images)])
        timing.update(json.loads(out.stdout.strip().splitlines()[-1]))
        patience = timing["patience"]
        stop = args.num_steps
        if patience:
            stop = min(args.num_steps, args.best_step + patience * args.eval_every)
        timing["steps_run"] = stop
        timing["train_seconds"] = (
            stop * timing["seconds_per_step"]
            + stop // args.eval_every * timing["seconds_per_validation"]
        )
        timing["full_retrieval_seconds"] = 1000 * 5000 / timing["pairs_per_second"]
        results[repo] = timing
        print(repo, json.dumps(timing), flush=True)

    base = results[args.repo[0]]
    print(
        "\n| code | s/step | s/validation | steps to the end (best + patience) | "
        "make train (extrapolated) | retrieval pairs/s | 1,000 x 5,000 scoring "
        "(extrapolated) |\n|---|---|---|---|---|---|---|"
    )
    for repo, t in results.items():
        print(
            f"| {repo} | {t['seconds_per_step']:.3f} | {t['seconds_per_validation']:.1f} | "
            f"{t['steps_run']:,} | {t['train_seconds'] / 60:.1f} min "
            f"({t['train_seconds'] / base['train_seconds']:.2f}x) | "
            f"{t['pairs_per_second']:,.0f} | {t['full_retrieval_seconds'] / 60:.1f} min "
            f"({t['full_retrieval_seconds'] / base['full_retrieval_seconds']:.2f}x) |"
        )


if __name__ == "__main__":
    main()
