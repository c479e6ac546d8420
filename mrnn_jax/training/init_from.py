"""The starting point of a fine-tuning phase (``train.init_from``, ``--init-from``): a trained
run's checkpoint, checked against the new run's model and data before anything is written."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ml_collections import ConfigDict

from mrnn_jax import checkpoint_reader, configs
from mrnn_jax.configs import MODEL_SECTIONS
from mrnn_jax.errors import MrnnError
from mrnn_jax.text.vocab import Vocabulary

# Where the model's inputs lie, not what the model is: they may differ between the runs.
_PATH_KEYS = ("encoder.weights",)


@dataclasses.dataclass(frozen=True)
class InitPoint:
    """A checkpoint to start from: its manager directory and step, and its vocabulary."""

    directory: str
    step: int
    vocab: Vocabulary

    def describe(self) -> str:
        """``DIR/STEP`` of the checkpoint."""
        return os.path.join(self.directory, str(self.step))


def find_init(path: str, config: ConfigDict) -> InitPoint:
    """The checkpoint ``path`` names (a work directory: its best; or one step's folder), after
    checking that its model is the one ``config`` describes; raises :class:`MrnnError` (one
    line) when there is none or it is another model."""
    if not path:
        raise MrnnError(
            "train.objective=scst fine-tunes a trained model: give --init-from RUN (a work "
            "directory of 'mrnn train', or one of its step folders)"
        )
    directory, step = checkpoint_reader.find_checkpoint(path, "best")
    saved = configs.flatten(checkpoint_reader.read_json_item(directory, step, "config"))
    now = configs.flatten(configs.to_json(config))
    differ = [
        f"{key}={saved.get(key)!r} there, {now.get(key)!r} here"
        for key in sorted(set(saved) | set(now))
        if key.split(".", 1)[0] in MODEL_SECTIONS
        and key not in _PATH_KEYS
        and saved.get(key) != now.get(key)
    ]
    if differ:
        raise MrnnError(
            f"--init-from {path}: another model ({'; '.join(differ[:3])}); fine-tuning "
            "starts from the same model: use that run's config and model values"
        )
    vocab = Vocabulary.from_json(checkpoint_reader.read_json_item(directory, step, "vocab"))
    return InitPoint(directory, step, vocab)


def check_vocabulary(init: InitPoint, path: str, data_vocab: Vocabulary) -> None:
    """Raises :class:`MrnnError` unless the data's vocabulary is the starting point's."""
    if tuple(init.vocab.words) != tuple(data_vocab.words):
        raise MrnnError(
            f"--init-from {path}: its vocabulary ({len(init.vocab)} words) is not this "
            f"data's ({len(data_vocab)} words at dataset.min_count); fine-tune on the "
            "dataset and dataset.min_count it was trained with"
        )


def read_params(init: InitPoint, abstract_params: Any) -> Any:
    """The starting point's parameters, placed as ``abstract_params`` says."""
    return checkpoint_reader.restore_params(init.directory, init.step, abstract_params)
