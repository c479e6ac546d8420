"""From records to fixed-shape batches: caption tables, seeded epoch order, eval batches.

The order of training examples is a pure function of (seed, step), so that a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from mrnn_jax.data.records import ImageRecord
from mrnn_jax.vocab import PAD_ID, TOKENIZER, Vocabulary


@dataclasses.dataclass
class SplitData:
    """One split: its records and their image inputs (pixels or features), row-aligned.

    ``scenes`` holds generator ground truth for synthetic datasets (``shapes``), else None.
    """

    records: list[ImageRecord]
    inputs: np.ndarray
    scenes: list | None = None


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """One epoch's order: image rows (those with captions) and each image's first caption."""

    images: np.ndarray
    first_caption: np.ndarray


@dataclasses.dataclass(frozen=True)
class CaptionTable:
    """Every (image, caption) pair of a split: ``image_index [P]`` and ``tokens [P, T+2]``.

    Pairs are in image order, so the captions of image ``i`` are rows ``offsets[i] ..
    offsets[i] + counts[i] - 1``.
    """

    image_index: np.ndarray
    tokens: np.ndarray
    counts: np.ndarray
    _orders: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, records: list[ImageRecord], vocab: Vocabulary, max_words: int) -> CaptionTable:
        """Encodes every caption of ``records`` (start + up to max_words words + end, padded)."""
        index = [i for i, record in enumerate(records) for _ in record.tokens]
        token_lists = [tokens for record in records for tokens in _tokens(record, vocab)]
        return cls(
            image_index=np.asarray(index, np.int32),
            tokens=vocab.encode_batch(token_lists, max_words),
            counts=np.asarray([len(record.tokens) for record in records], np.int64),
        )

    @classmethod
    def build_uncut(
        cls, records: list[ImageRecord], vocab: Vocabulary, max_words: int
    ) -> CaptionTable:
        """Like :meth:`build`, but long enough for the split's longest caption, so that
        evaluation scores every word (an end token after a cut would be credited falsely)."""
        longest = max((len(t) for r in records for t in _tokens(r, vocab)), default=0)
        return cls.build(records, vocab, max(max_words, longest))

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def offsets(self) -> np.ndarray:
        """Row of each image's first caption."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def num_captioned_images(self) -> int:
        """Images with at least one caption."""
        return int(np.count_nonzero(self.counts))

    def epoch_order(self, seed: int, epoch: int) -> EpochOrder:
        """The seeded order of ``epoch`` (a pure function of seed and epoch; cached)."""
        key = (seed, epoch)
        if key not in self._orders:
            rng = np.random.default_rng([seed, epoch])
            images = rng.permutation(np.flatnonzero(self.counts > 0))
            first = rng.integers(0, np.maximum(self.counts, 1))
            self._orders.clear()
            self._orders[key] = EpochOrder(images=images, first_caption=first)
        return self._orders[key]


def _tokens(record: ImageRecord, vocab: Vocabulary) -> tuple[tuple[str, ...], ...]:
    """The record's captions as ``vocab``'s tokenizer splits them: the records' own tokens
    (the current tokenizer's), or for a legacy vocabulary its old tokenizer's."""
    if vocab.tokenizer == TOKENIZER:
        return record.tokens
    return tuple(tuple(vocab.tokenize(caption)) for caption in record.captions)


def images_per_batch(batch_size: int, captions_per_image: int) -> int:
    """Images in a training batch of ``batch_size`` captions, ``captions_per_image`` each."""
    if captions_per_image < 1 or batch_size % captions_per_image:
        raise ValueError(
            f"batch size {batch_size} is not a multiple of captions_per_image={captions_per_image}"
        )
    return batch_size // captions_per_image


def batches_per_epoch(table: CaptionTable, batch_size: int, captions_per_image: int) -> int:
    """Number of full batches in one pass over the images (the remainder is dropped)."""
    return table.num_captioned_images // images_per_batch(batch_size, captions_per_image)


def train_batch(
    table: CaptionTable,
    inputs: np.ndarray,
    step: int,
    batch_size: int,
    seed: int,
    captions_per_image: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """The training batch for ``step``: ``batch_size`` captions of ``batch_size / K`` images.

    Each epoch visits every image once, in a fresh seeded order, with ``K =
    captions_per_image`` of its captions (cycling from a seeded first caption, so that over
    epochs every caption is used). Returns ``image [B/K, ...]`` and ``tokens [B, T+2]``, where
    captions ``K*i .. K*i+K-1`` belong to image ``i``. With several processes, each gets
    only its own contiguous ``1 / process_count`` of the images of the global batch (and
    reads only their rows of a memory-mapped features file).
    """
    indices = batch_indices(
        table, step, batch_size, seed, captions_per_image, process_index, process_count
    )
    return {"image": inputs[indices["images"]], "tokens": table.tokens[indices["rows"]]}


def batch_indices(
    table: CaptionTable,
    step: int,
    batch_size: int,
    seed: int,
    captions_per_image: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """Which rows make :func:`train_batch`: ``images [B/K]`` (input rows) and ``rows [B]``
    (caption-table rows); for gathering the batch where the data lies (e.g. on device)."""
    per_batch = images_per_batch(batch_size, captions_per_image)
    per_epoch = batches_per_epoch(table, batch_size, captions_per_image)
    if per_epoch == 0:
        raise ValueError(f"a batch needs {per_batch} images; the split has fewer with captions")
    if per_batch % process_count:
        raise ValueError(f"{per_batch} images a batch do not split over {process_count} processes")
    epoch, position = divmod(step, per_epoch)
    order = table.epoch_order(seed, epoch)
    local = per_batch // process_count
    start = position * per_batch + process_index * local
    images = order.images[start : start + local]
    counts = table.counts[images, None]
    which = (order.first_caption[images, None] + np.arange(captions_per_image)) % counts
    rows = (table.offsets[images, None] + which).reshape(-1)
    return {"images": images.astype(np.int32), "rows": rows.astype(np.int32)}


def data_state(
    table: CaptionTable, step: int, batch_size: int, captions_per_image: int
) -> dict[str, int]:
    """Where in the data order ``step`` is: epoch and batch within it (for checkpoints)."""
    epoch, position = divmod(step, batches_per_epoch(table, batch_size, captions_per_image))
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
