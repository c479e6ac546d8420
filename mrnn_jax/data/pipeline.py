"""From records to fixed-shape batches: caption tables, seeded epoch order, eval batches.

The order of training examples is a pure function of (seed, step), so that a resumed run sees
exactly the batches an uninterrupted one would.

Length buckets: given a few padded widths (``widths``, in token positions), each training
batch gathers captions of similar length and is padded only to the narrowest width that holds
its longest one, so a real-caption batch (mean about 12 positions) is not padded to 22; the
step compiles once per width. Evaluation batches sort captions by length the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from mrnn_jax.data.records import ImageRecord
from mrnn_jax.text.vocab import PAD_ID, TOKENIZER, Vocabulary


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
class BucketedEpoch:
    """One epoch's batches under length buckets: ``images [batches, per_batch]`` (image rows,
    batch by batch, in the order they are trained on) and each batch's padded ``width``."""

    images: np.ndarray
    width: np.ndarray


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
    def lengths(self) -> np.ndarray:
        """Token positions of each caption: start token, words and end token (no padding)."""
        if "lengths" not in self._orders:
            self._orders["lengths"] = np.count_nonzero(self.tokens != PAD_ID, axis=1)
        return self._orders["lengths"]

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
            self._forget_epochs()
            self._orders[key] = EpochOrder(images=images, first_caption=first)
        return self._orders[key]

    def bucketed_epoch(
        self, seed: int, epoch: int, per_batch: int, captions_per_image: int, widths: tuple
    ) -> BucketedEpoch:
        """The batches of ``epoch`` under length buckets (a pure function of its arguments).

        The epoch's images, in :meth:`epoch_order`'s order with the same captions, go to the
        narrowest width that holds their longest caption; each bucket is cut into full
        batches, its remainder joining the next wider bucket (the last remainder is dropped,
        as without buckets, so an epoch has the same number of batches); the batches are
        then shuffled with the epoch's seed.
        """
        key = ("buckets", seed, epoch, per_batch, captions_per_image, widths)
        if key not in self._orders:
            order = self.epoch_order(seed, epoch)
            rows = caption_rows(self, order, order.images, captions_per_image)
            longest = self.lengths[rows].max(axis=1)
            bounds = bucket_widths(widths, self.tokens.shape[1])
            bucket = np.searchsorted(bounds, longest)  # the narrowest width >= longest
            batches, batch_widths = [], []
            left = order.images[:0]
            for index, width in enumerate(bounds):
                pool = np.concatenate([left, order.images[bucket == index]])
                full = len(pool) // per_batch * per_batch
                batches.append(pool[:full].reshape(-1, per_batch))
                batch_widths += [width] * (full // per_batch)
                left = pool[full:]
            shuffle = np.random.default_rng([seed, epoch, 1]).permutation(len(batch_widths))
            bucketed = BucketedEpoch(
                images=np.concatenate(batches)[shuffle],
                width=np.asarray(batch_widths, np.int64)[shuffle],
            )
            self._orders[key] = bucketed
        return self._orders[key]

    def _forget_epochs(self) -> None:
        """Drops cached epoch orders (one epoch is used at a time)."""
        for key in [k for k in self._orders if k != "lengths"]:
            del self._orders[key]


EVAL_WIDTHS = (8, 12, 16, 24, 32, 48, 64)
"""Evaluation's and retrieval's padded widths in token positions (start, words, end): one
compile each, and a sentence is padded to at most about 1.5 times its length."""


def bucket_widths(widths: tuple, full_width: int) -> np.ndarray:
    """The sorted padded widths in use: those of ``widths`` narrower than ``full_width`` (the
    table's width), and ``full_width`` itself, which holds every caption."""
    return np.asarray(sorted({int(w) for w in widths if 0 < w < full_width} | {full_width}))


def caption_rows(
    table: CaptionTable, order: EpochOrder, images: np.ndarray, captions_per_image: int
) -> np.ndarray:
    """Table rows ``[len(images), K]`` of the K captions each image has in ``order``'s epoch."""
    counts = table.counts[images, None]
    which = (order.first_caption[images, None] + np.arange(captions_per_image)) % counts
    return table.offsets[images, None] + which


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
    widths: tuple = (),
) -> dict[str, np.ndarray]:
    """The training batch for ``step``: ``batch_size`` captions of ``batch_size / K`` images.

    Each epoch visits every image once, in a fresh seeded order, with ``K =
    captions_per_image`` of its captions (cycling from a seeded first caption, so that over
    epochs every caption is used). Returns ``image [B/K, ...]`` and ``tokens [B, T+2]``, where
    captions ``K*i .. K*i+K-1`` belong to image ``i``. With several processes, each gets
    only its own contiguous ``1 / process_count`` of the images of the global batch (and
    reads only their rows of a memory-mapped features file). With length bucket ``widths``
    (token positions; see :meth:`CaptionTable.bucketed_epoch`), ``tokens`` is cut to the
    batch's bucket width.
    """
    indices = batch_indices(
        table, step, batch_size, seed, captions_per_image, process_index, process_count, widths
    )
    width = batch_width(table, step, batch_size, seed, captions_per_image, widths)
    return {"image": inputs[indices["images"]], "tokens": table.tokens[indices["rows"], :width]}


def batch_indices(
    table: CaptionTable,
    step: int,
    batch_size: int,
    seed: int,
    captions_per_image: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    widths: tuple = (),
) -> dict[str, np.ndarray]:
    """Which rows make :func:`train_batch`: ``images [B/K]`` (input rows) and ``rows [B]``
    (caption-table rows); for gathering the batch where the data lies (e.g. on device).
    Its width is :func:`batch_width`."""
    per_batch = images_per_batch(batch_size, captions_per_image)
    per_epoch = batches_per_epoch(table, batch_size, captions_per_image)
    if per_epoch == 0:
        raise ValueError(f"a batch needs {per_batch} images; the split has fewer with captions")
    if per_batch % process_count:
        raise ValueError(f"{per_batch} images a batch do not split over {process_count} processes")
    epoch, position = divmod(step, per_epoch)
    order = table.epoch_order(seed, epoch)
    local = per_batch // process_count
    if widths:
        bucketed = table.bucketed_epoch(seed, epoch, per_batch, captions_per_image, tuple(widths))
        images = bucketed.images[position, process_index * local : (process_index + 1) * local]
    else:
        start = position * per_batch + process_index * local
        images = order.images[start : start + local]
    rows = caption_rows(table, order, images, captions_per_image).reshape(-1)
    return {"images": images.astype(np.int32), "rows": rows.astype(np.int32)}


def batch_width(
    table: CaptionTable,
    step: int,
    batch_size: int,
    seed: int,
    captions_per_image: int = 1,
    widths: tuple = (),
) -> int:
    """Token positions the training batch of ``step`` is padded to: its length bucket's
    width under ``widths`` (see :meth:`CaptionTable.bucketed_epoch`), else the table's."""
    if not widths:
        return int(table.tokens.shape[1])
    per_batch = images_per_batch(batch_size, captions_per_image)
    epoch, position = divmod(step, batches_per_epoch(table, batch_size, captions_per_image))
    bucketed = table.bucketed_epoch(seed, epoch, per_batch, captions_per_image, tuple(widths))
    return int(bucketed.width[position])


def data_state(
    table: CaptionTable, step: int, batch_size: int, captions_per_image: int
) -> dict[str, int]:
    """Where in the data order ``step`` is: epoch and batch within it (for checkpoints)."""
    epoch, position = divmod(step, batches_per_epoch(table, batch_size, captions_per_image))
    return {"epoch": int(epoch), "batch_in_epoch": int(position)}


def eval_batches(
    table: CaptionTable, inputs: np.ndarray, batch_size: int, widths: tuple = ()
) -> Iterator[dict[str, np.ndarray]]:
    """Every pair once, in full batches; the last is padded with all-padding rows.

    Without ``widths``, in table order at the table's width. With length bucket ``widths``
    (token positions), the pairs go shortest caption first and each batch is cut to the
    narrowest of the widths (or the table's) that holds its longest caption.
    """
    order = np.arange(len(table))
    bounds = bucket_widths(widths, table.tokens.shape[1])
    if widths:
        order = np.argsort(table.lengths, kind="stable")
    for start in range(0, len(table), batch_size):
        rows = order[start : start + batch_size]
        longest = int(table.lengths[rows].max()) if len(rows) else 1
        width = int(bounds[np.searchsorted(bounds, longest)])
        tokens = table.tokens[rows, :width]
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
