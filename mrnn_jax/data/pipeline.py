"""From records to fixed-shape batches: caption tables, seeded epoch order, eval batches.

The order of training examples is a pure function of (seed, step), so that a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import numpy as np

from mrnn_jax.data.records import ImageRecord
from mrnn_jax.vocab import PAD_ID, Vocabulary


@dataclasses.dataclass
class SplitData:
    """One split: its records and their image inputs (pixels or features), row-aligned.

    ``scenes`` holds generator ground truth for synthetic datasets (``shapes``), else None.
    """

    records: list[ImageRecord]
    inputs: np.ndarray
    scenes: list | None = None


@dataclasses.dataclass(frozen=True)
class CaptionTable:
    """Every (image, caption) pair of a split: ``image_index [P]`` and ``tokens [P, T+2]``."""

    image_index: np.ndarray
    tokens: np.ndarray

    @classmethod
    def build(cls, records: list[ImageRecord], vocab: Vocabulary, max_words: int) -> CaptionTable:
        """Encodes every caption of ``records`` (start + up to max_words words + end, padded)."""
        index = [i for i, record in enumerate(records) for _ in record.tokens]
        token_lists = [tokens for record in records for tokens in record.tokens]
        return cls(
            image_index=np.asarray(index, np.int32),
            tokens=vocab.encode_batch(token_lists, max_words),
        )

    def __len__(self) -> int:
        return len(self.image_index)


@functools.lru_cache(maxsize=2)
def _epoch_order(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_pairs)


def batches_per_epoch(table: CaptionTable, batch_size: int) -> int:
    """Number of full batches in one pass over the table (the remainder is dropped)."""
    return len(table) // batch_size


def train_batch(
    table: CaptionTable, inputs: np.ndarray, step: int, batch_size: int, seed: int
) -> dict[str, np.ndarray]:
    """The training batch for ``step``: pairs in a fresh seeded permutation each epoch."""
    per_epoch = batches_per_epoch(table, batch_size)
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(table)} training captions")
    epoch, position = divmod(step, per_epoch)
    order = _epoch_order(len(table), seed, epoch)
    rows = np.sort(order[position * batch_size : (position + 1) * batch_size])
    return {"image": inputs[table.image_index[rows]], "tokens": table.tokens[rows]}


def data_state(table: CaptionTable, step: int, batch_size: int) -> dict[str, int]:
    """Where in the data order ``step`` is: epoch and batch within it (for checkpoints)."""
    epoch, position = divmod(step, batches_per_epoch(table, batch_size))
    return {"epoch": int(epoch), "batch_in_epoch": int(position)}


def eval_batches(
    table: CaptionTable, inputs: np.ndarray, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Every pair once, in order, in full batches; the last is padded with all-padding rows."""
    for start in range(0, len(table), batch_size):
        rows = np.arange(start, min(start + batch_size, len(table)))
        tokens = table.tokens[rows]
        image_rows = table.image_index[rows]
        short = batch_size - len(rows)
        if short:
            tokens = np.concatenate([tokens, np.full((short, tokens.shape[1]), PAD_ID, np.int32)])
            image_rows = np.concatenate([image_rows, np.zeros(short, np.int32)])
        yield {"image": inputs[image_rows], "tokens": tokens}


def image_batches(inputs: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Every image input once in full batches (the last padded); yields (batch, real count)."""
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        count = len(batch)
        if count < batch_size:
            pad = np.repeat(batch[:1], batch_size - count, axis=0)
            batch = np.concatenate([batch, pad])
        yield batch, count
