"""The m-RNN against an image-blind baseline on the built-in ``shapes`` dataset.

Trains (or resumes, or reuses) two runs with the same config and budget: the m-RNN, and the
same architecture with its image input zeroed (``model.zero_image=True``), a language model
that never sees the image. Prints a Markdown table of test and novel perplexity and of the
share of greedy captions that name the largest object ("red circle") as one phrase, and
writes it to ``--out``.

    python experiments/shapes_baselines.py --workdir runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from mrnn_jax import configs, logs
from mrnn_jax.run_dir import RunDir
from mrnn_jax.training.loop import train_and_evaluate

RUNS = {"m-RNN": [], "image-blind (zeroed image)": ["model.zero_image=True"]}


def _run(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    workdir = os.path.join(args.workdir, "shapes" if not overrides else "shapes_blind")
    results_path = RunDir.at(workdir).results
    if args.reuse and os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            return json.load(f)
    config = configs.load_config(args.config, [*overrides, *args.overrides])
    print(f"training {name} in {workdir}")
    return train_and_evaluate(config, workdir, progress=not args.no_progress)


def markdown_table(results: dict[str, dict]) -> str:
    """The comparison as a Markdown table (one row per run and split)."""
    blind = results["image-blind (zeroed image)"]["splits"]
    lines = [
        "| model | split | perplexity | vs. image-blind | largest object named |",
        "|---|---|---|---|---|",
    ]
    splits = sorted(blind, key=lambda s: (s != "test", s))
    for split in splits:
        for name, result in results.items():
            values = result["splits"][split]
            reduction = 1.0 - values["perplexity"] / blind[split]["perplexity"]
            versus = "(baseline)" if values is blind[split] else f"{100 * reduction:.1f}% lower"
            lines.append(
                f"| {name} | {split} | {values['perplexity']:.3f} | {versus} | "
                f"{100 * values['largest object named']:.1f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    """Runs both trainings and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs", help="parent of shapes/ and shapes_blind/")
    parser.add_argument("--config", default="shapes", help="config for both runs")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--reuse", action="store_true", help="reuse results.json of finished runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for both runs")
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)
    started = time.time()
    results = {name: _run(name, overrides, args) for name, overrides in RUNS.items()}
    table = markdown_table(results)
    footer = (
        f"\n\n{platform.machine()} with {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}; m-RNN training and evaluation wall time "
        f"{results['m-RNN']['wall_time_seconds'] / 60:.1f} min "
        f"(this script: {(time.time() - started) / 60:.1f} min)."
    )
    print(table + footer)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + footer + "\n")


if __name__ == "__main__":
    main()
