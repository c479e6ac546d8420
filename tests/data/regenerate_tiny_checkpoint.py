"""Rebuilds tests/data/tiny_checkpoint: a tiny run's best checkpoint plus expected outputs.

Run only when a change of checkpoint format or model numerics is intended:

    python tests/data/regenerate_tiny_checkpoint.py

tests/test_checkpoint.py restores this committed checkpoint, so that an unintended change of
format (a new orbax or flax version, a renamed parameter) fails the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "tiny_checkpoint")


def main() -> None:
    """Trains the tiny config, keeps its best checkpoint, and records what it produces."""
    import mrnn_jax
    from mrnn_jax import api
    from mrnn_jax.data import shapes

    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mrnn_jax",
                "train",
                "--config",
                "tiny",
                "--workdir",
                workdir,
                "--no-progress",
            ],
            check=True,
        )
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(os.path.join(workdir, "best"), os.path.join(TARGET, "best"))

    split = shapes.make_split("test", 2, seed=0, image_size=64)
    image_path = os.path.join(TARGET, "sample.png")
    Image.fromarray(split.images[0]).save(image_path)
    captioner = mrnn_jax.load(TARGET)
    [[(caption, log_prob)]] = api.caption(captioner, [image_path])
    reference = split.records[0].captions[0]
    log_likelihood = float(api.score(captioner, split.images[:1], [reference])[0, 0])
    expected = {
        "step": captioner.step,
        "vocab_size": len(captioner.vocab),
        "caption": caption,
        "caption_log_prob": log_prob,
        "reference": reference,
        "reference_log_likelihood": log_likelihood,
        "num_parameters": int(sum(np.size(x) for x in _leaves(captioner.params))),
    }
    with open(os.path.join(TARGET, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    print(json.dumps(expected, indent=2))


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


if __name__ == "__main__":
    main()
