"""The record type every dataset reader produces, the report of what reading skipped, and
the one function that turns captions and a split into records."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

from mrnn_jax import logs
from mrnn_jax.text.vocab import tokenize

SPLIT_ORDER = ("train", "val", "test", "restval", "novel")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions.

    Attributes:
      image_id: a stable identifier, unique within the dataset (a file name for real data).
      split: ``train``, ``val``, ``test`` or another split name (``novel`` for ``shapes``).
      captions: the raw reference captions as the source gives them.
      tokens: each caption tokenised with :func:`mrnn_jax.text.vocab.tokenize`, same order.
      file_path: where the image lies on disk, or ``None`` when pixels are held in memory
        (the built-in ``shapes`` dataset) or only precomputed features exist.
    """

    image_id: str
    split: str
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]
    file_path: str | None = None


class DataReport:
    """What reading a dataset skipped or repaired, counted by kind, with the first examples."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = {}

    def note(self, kind: str, where: str, count: int = 1) -> None:
        """Counts ``count`` occurrences of ``kind``; ``where`` (file:line, image) is an example."""
        self.counts[kind] += count
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.EXAMPLES:
            examples.append(where)

    def summary(self) -> dict:
        """``{kind: {"count": n, "examples": [...]}}`` for the run summary."""
        return {
            kind: {"count": count, "examples": self.examples.get(kind, [])}
            for kind, count in sorted(self.counts.items())
        }

    def log(self, dataset: str, source: str = "") -> None:
        """Logs one warning line per kind, each once per process for the dataset read from
        ``source`` (its folder), however many times it is read."""
        identity = (dataset, os.path.abspath(source) if source else "")
        for kind, count in sorted(self.counts.items()):
            examples = ", ".join(self.examples.get(kind, []))
            logs.warn_once(identity, "%s: %d %s (e.g. %s)", dataset, count, kind, examples)


Caption = tuple[str, str]  # (raw caption, where it came from: "file:line")


def make_records(
    captions: Mapping[str, Sequence[Caption]],
    split_of: Mapping[str, str],
    file_path: Callable[[str], str | None],
    report: DataReport,
) -> list[ImageRecord]:
    """Records for every image of ``split_of`` (in its order) that has a usable caption.

    ``captions`` maps image id to its ``(raw caption, "file:line")`` pairs. Skipped and
    counted in ``report``: empty captions, captions without a word (only punctuation), a
    caption repeated for the same image, images of a split without captions, and captions
    of images in no split.
    """
    for image_id, pairs in captions.items():
        if image_id not in split_of:
            report.note("captions of images in no split (skipped)", image_id, len(pairs))
    records = []
    for image_id, split in split_of.items():
        pairs = captions.get(image_id)
        if not pairs:
            report.note("images of a split without captions (skipped)", f"{image_id} ({split})")
            continue
        raws: list[str] = []
        token_lists: list[tuple[str, ...]] = []
        for raw, where in pairs:
            raw = " ".join(raw.split())
            tokens = tuple(tokenize(raw))
            if not raw:
                report.note("empty captions (skipped)", where)
            elif not tokens:
                report.note("captions without a word (skipped)", where)
            elif tokens in token_lists:
                report.note("duplicate captions of an image (skipped)", where)
            else:
                raws.append(raw)
                token_lists.append(tokens)
        if not raws:
            report.note("images left without a caption (skipped)", image_id)
            continue
        records.append(
            ImageRecord(
                image_id=image_id,
                split=split,
                captions=tuple(raws),
                tokens=tuple(token_lists),
                file_path=file_path(image_id),
            )
        )
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    records.sort(key=lambda r: rank.get(r.split, len(rank)))  # stable: keeps the split order
    return records
