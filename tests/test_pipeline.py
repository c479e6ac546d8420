"""The input pipeline: caption tables, seeded epoch order, K captions per image, eval batches."""

from __future__ import annotations

import numpy as np
import pytest

from mrnn_jax.data.pipeline import (
    CaptionTable,
    batches_per_epoch,
    data_state,
    eval_batches,
    image_batches,
    train_batch,
)
from mrnn_jax.data.records import ImageRecord
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, Vocabulary


def _records(counts: list[int]) -> list[ImageRecord]:
    records = []
    for i, count in enumerate(counts):
        tokens = tuple((f"img{i}", f"cap{j}") + ("x",) * j for j in range(count))
        records.append(ImageRecord(f"im{i}", "train", tuple(" ".join(t) for t in tokens), tokens))
    return records


def _table(counts: list[int], max_words: int = 8) -> tuple[CaptionTable, Vocabulary]:
    records = _records(counts)
    vocab = Vocabulary.build([t for r in records for t in r.tokens], min_count=1)
    return CaptionTable.build(records, vocab, max_words), vocab


def test_table_rows_are_grouped_by_image():
    table, vocab = _table([3, 0, 5, 1])
    assert len(table) == 9
    assert table.counts.tolist() == [3, 0, 5, 1]
    assert table.offsets.tolist() == [0, 3, 3, 8]
    assert table.num_captioned_images == 3
    for row in range(len(table)):
        words = vocab.decode(table.tokens[row])
        assert words[0] == f"img{table.image_index[row]}"
    assert (table.tokens[:, 0] == START_ID).all()


def test_train_batches_are_a_pure_function_of_seed_and_step():
    table, _ = _table([5] * 12)
    inputs = np.arange(12)[:, None].repeat(3, axis=1)
    a = train_batch(table, inputs, 7, 10, seed=3, captions_per_image=5)
    b = train_batch(
        CaptionTable(table.image_index, table.tokens, table.counts), inputs, 7, 10, 3, 5
    )
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["image"], b["image"])
    c = train_batch(table, inputs, 7, 10, seed=4, captions_per_image=5)
    assert not np.array_equal(a["image"], c["image"]) or not np.array_equal(
        a["tokens"], c["tokens"]
    )


def test_k_captions_belong_to_their_image_and_epoch_visits_each_image_once():
    table, vocab = _table([5, 5, 2, 7, 5, 5])  # 2 images per batch, 3 batches per epoch
    inputs = np.arange(6)
    assert batches_per_epoch(table, 10, 5) == 3
    seen = []
    for step in range(3):
        batch = train_batch(table, inputs, step, 10, seed=0, captions_per_image=5)
        assert batch["tokens"].shape[0] == 10 and batch["image"].shape == (2,)
        for k, image in enumerate(batch["image"]):
            captions = batch["tokens"][5 * k : 5 * k + 5]
            heads = {vocab.decode(row)[0] for row in captions}
            assert heads == {f"img{image}"}
            # Distinct captions when the image has enough; all of them when it has fewer.
            kinds = {vocab.decode(row)[1] for row in captions}
            assert len(kinds) == min(5, table.counts[image])
        seen.extend(batch["image"].tolist())
    assert sorted(seen) == list(range(6))
    assert data_state(table, 4, 10, 5) == {"epoch": 1, "batch_in_epoch": 1}


def test_batch_size_must_be_a_multiple_of_captions_per_image():
    table, _ = _table([5] * 4)
    with pytest.raises(ValueError, match="multiple of captions_per_image"):
        train_batch(table, np.arange(4), 0, 7, seed=0, captions_per_image=5)


def test_eval_batches_cover_every_pair_once_and_pad_with_padding_rows():
    table, _ = _table([2, 3])
    inputs = np.array([10, 20])
    batches = list(eval_batches(table, inputs, 4))
    assert len(batches) == 2
    tokens = np.concatenate([b["tokens"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(tokens[:5], table.tokens)
    assert images[:5].tolist() == [10, 10, 20, 20, 20]
    assert (tokens[5:] == PAD_ID).all()


def test_uncut_table_scores_every_word():
    records = _records([6])  # captions of up to 7 words
    vocab = Vocabulary.build([t for r in records for t in r.tokens], min_count=1)
    cut = CaptionTable.build(records, vocab, 3)
    uncut = CaptionTable.build_uncut(records, vocab, 3)
    assert cut.tokens.shape[1] == 5 and uncut.tokens.shape[1] == 9
    longest = uncut.tokens[-1]
    assert longest[-1] == END_ID and (longest != PAD_ID).all()


def test_image_batches_pad_the_last_batch():
    out = list(image_batches(np.arange(5), 2))
    assert [count for _, count in out] == [2, 2, 1]
    assert all(batch.shape == (2,) for batch, _ in out)


def test_each_process_gets_its_own_part_of_the_global_batch():
    table, _ = _table([5] * 16)
    inputs = np.arange(16)[:, None] * 10.0
    for step in (0, 3, 5):
        full = train_batch(table, inputs, step, 20, seed=1, captions_per_image=5)
        parts = [
            train_batch(table, inputs, step, 20, 1, 5, process_index=p, process_count=2)
            for p in range(2)
        ]
        assert parts[0]["image"].shape == (2, 1) and parts[0]["tokens"].shape[0] == 10
        for key in ("image", "tokens"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
    with pytest.raises(ValueError, match="do not split over 3 processes"):
        train_batch(table, inputs, 0, 20, 1, 5, process_index=0, process_count=3)


def test_batches_read_memory_mapped_feature_rows(tmp_path):
    from mrnn_jax.data.features import RowSubset

    table, _ = _table([2] * 6)
    base = np.lib.format.open_memmap(tmp_path / "f.npy", "w+", np.float16, (10, 4))
    base[:] = np.arange(40).reshape(10, 4)
    base.flush()
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    rows = np.array([9, 7, 5, 3, 1, 0])  # record i's features are row rows[i] of the file
    inputs = RowSubset(mapped, rows)
    assert inputs.shape == (6, 4) and len(inputs) == 6
    batch = train_batch(table, inputs, 0, 6, seed=0, captions_per_image=2)
    images = table.epoch_order(0, 0).images[:3]
    np.testing.assert_array_equal(batch["image"], np.asarray(mapped)[rows[images]])
    np.testing.assert_array_equal(inputs[1:3], np.asarray(mapped)[[7, 5]])
    np.testing.assert_array_equal(inputs[2], np.asarray(mapped)[5])  # one row, not [1, D]


def _varied_table(images: int = 40, max_words: int = 12) -> CaptionTable:
    """Captions of 0 .. 11 words, 3 per image, lengths spread over the images."""
    records = []
    for i in range(images):
        tokens = tuple(("w",) * ((i * 7 + j * 5) % 12) for j in range(3))
        records.append(ImageRecord(f"im{i}", "train", tuple(" ".join(t) for t in tokens), tokens))
    vocab = Vocabulary.build([t for r in records for t in r.tokens], min_count=1)
    return CaptionTable.build(records, vocab, max_words)


def test_bucketed_batches_hold_their_captions_and_an_epoch_visits_each_image_once():
    table = _varied_table()
    widths = (5, 8, 11)  # token positions; the table's own width, 14, is added
    inputs = np.arange(40)
    per_epoch = batches_per_epoch(table, 6, 2)
    assert per_epoch == 40 // 3  # as many batches as without buckets
    seen, used_widths = [], set()
    for step in range(per_epoch):
        plain = train_batch(table, inputs, step, 6, seed=2, captions_per_image=2)
        batch = train_batch(table, inputs, step, 6, 2, 2, widths=widths)
        width = batch["tokens"].shape[1]
        used_widths.add(width)
        lengths = np.count_nonzero(batch["tokens"] != PAD_ID, axis=1)
        # The narrowest width that holds the batch's longest caption (so no word is cut).
        assert width == min(w for w in (*widths, 14) if w >= lengths.max())
        assert (batch["tokens"][:, 0] == START_ID).all()
        assert (np.sum(batch["tokens"] == END_ID, axis=1) == 1).all()
        assert plain["tokens"].shape[1] == 14
        seen.extend(batch["image"].tolist())
    assert len(seen) == len(set(seen)) == per_epoch * 3  # each image at most once
    assert len(used_widths) > 1
    # Each image brings the same captions as without buckets, in another batch.
    order = table.epoch_order(2, 0)
    for step in range(per_epoch):
        batch = train_batch(table, inputs, step, 6, 2, 2, widths=widths)
        for k, image in enumerate(batch["image"]):
            first = order.first_caption[image]
            rows = table.offsets[image] + (first + np.arange(2)) % table.counts[image]
            np.testing.assert_array_equal(
                batch["tokens"][2 * k : 2 * k + 2], table.tokens[rows, : batch["tokens"].shape[1]]
            )


def test_bucketed_order_is_a_pure_function_of_seed_and_epoch():
    table = _varied_table()
    fresh = CaptionTable(table.image_index, table.tokens, table.counts)
    inputs = np.arange(40)
    for step in (0, 5, 13, 30):  # across epochs, and back: no state carried between calls
        a = train_batch(table, inputs, step, 6, 1, 2, widths=(5, 8))
        b = train_batch(fresh, inputs, step, 6, 1, 2, widths=(5, 8))
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["image"], b["image"])
    epochs = [
        [
            tuple(train_batch(table, inputs, s, 6, seed, 2, widths=(5, 8))["image"])
            for s in range(13)
        ]
        for seed in (1, 1, 2)
    ]
    assert epochs[0] == epochs[1] != epochs[2]


def test_bucketed_eval_batches_cover_every_pair_once_at_narrow_widths():
    table = _varied_table(images=10)
    inputs = np.arange(10) * 10
    batches = list(eval_batches(table, inputs, 4, widths=(5, 8)))
    pairs = []
    for batch in batches:
        assert batch["tokens"].shape[1] in (5, 8, 14)
        for row, image in zip(batch["tokens"], batch["image"], strict=True):
            if (row != PAD_ID).any():
                pairs.append((tuple(row[row != PAD_ID]), int(image)))
    expected = [
        (tuple(row[row != PAD_ID]), int(inputs[i]))
        for row, i in zip(table.tokens, table.image_index, strict=True)
    ]
    assert sorted(pairs) == sorted(expected)
    assert max(b["tokens"].shape[1] for b in batches[:2]) < 14  # short captions first
