"""Tests for the caption tokenizer (one for vocabulary and references) and the vocabulary."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mrnn_jax.errors import MrnnError
from mrnn_jax.text.ptb_tokenizer import ptb_tokenize
from mrnn_jax.text.vocab import (
    END,
    END_ID,
    PAD,
    PAD_ID,
    START,
    START_ID,
    UNK,
    UNK_ID,
    Vocabulary,
    legacy_tokenize,
    tokenize,
)

# --------------------------------------------------- one tokenizer: vocabulary = references

# Every token class where the vocabulary's old tokenizer and the scorers' disagreed, and the
# usual ones. Each caption's tokens are exactly what coco-caption scores.
TOKEN_CLASSES = [
    ("The bus leaves at 5 p.m. today.", ["the", "bus", "leaves", "at", "5", "p.m.", "today"]),
    ("a sign reading $5 off", ["a", "sign", "reading", "$", "5", "off"]),
    ("salt & pepper", ["salt", "&", "pepper"]),
    ("a man (in red) waves", ["a", "man", "-lrb-", "in", "red", "-rrb-", "waves"]),
    ("a [blurry] photo {of} a dog", None),
    ("A man's hat.", ["a", "man", "'s", "hat"]),
    ("Don't stop", ["do", "n't", "stop"]),
    ("I can't", ["i", "ca", "n't"]),
    ("a red t-shirt", ["a", "red", "t-shirt"]),
    ("3.5 meters, 1,000 birds", ["3.5", "meters", "1,000", "birds"]),
    ("50% off at St. Mary's", ["50", "%", "off", "at", "st.", "mary", "'s"]),
    ('He said "hi" -- then left...', ["he", "said", "hi", "then", "left"]),
    ("wow!!! really?!", ["wow", "!!!", "really", "?!"]),
    ("#1 fan", ["#", "1", "fan"]),
]


@pytest.mark.parametrize(("text", "expected"), TOKEN_CLASSES)
def test_vocabulary_tokens_are_the_scorers_tokens(text: str, expected) -> None:
    assert tokenize(text) == ptb_tokenize(text).split()
    if expected is not None:
        assert tokenize(text) == expected


def test_vocabulary_and_references_agree_on_every_token_class() -> None:
    """A vocabulary built from captions holding every token class encodes each reference
    without <unk>, and the words it decodes to score as the reference itself."""
    captions = [text for text, _ in TOKEN_CLASSES]
    vocab = Vocabulary.build([tokenize(c) for c in captions], min_count=1)
    assert vocab.tokenizer == "ptb"
    for caption in captions:
        ids = vocab.encode(vocab.tokenize(caption), max_words=50)
        assert UNK_ID not in ids, caption
        assert ptb_tokenize(" ".join(vocab.decode(ids))) == ptb_tokenize(caption), caption
    for word in ("p.m.", "$", "&", "-lrb-", "-rrb-", "-lsb-", "-rcb-", "%", "st."):
        assert word in vocab


def test_legacy_vocabulary_keeps_its_tokenizer() -> None:
    """A vocabulary written before the tokenizer was recorded (format 1) tokenises text as
    it was trained, and is written back in format 1."""
    old = {"format_version": 1, "min_count": 1, "words": [PAD, START, END, UNK, "p", "m"]}
    vocab = Vocabulary.from_json(old)
    assert vocab.tokenizer == "legacy"
    assert vocab.tokenize("at 5 p.m.") == ["at", "5", "p", "m"] == legacy_tokenize("at 5 p.m.")
    assert vocab.to_json() == old
    new = Vocabulary.build([["p.m."]], min_count=1)
    assert new.tokenize("at 5 p.m.") == ["at", "5", "p.m."]
    assert new.to_json()["tokenizer"] == "ptb"


def test_committed_old_checkpoint_still_loads_with_its_tokenizer() -> None:
    from mrnn_jax import api
    from mrnn_jax.captioner import load

    here = os.path.dirname(os.path.abspath(__file__))
    captioner = load(os.path.join(here, "data", "tiny_checkpoint"))
    assert captioner.vocab.tokenizer == "legacy"  # written before the tokenizer was recorded
    scores = api.score(
        captioner,
        np.zeros((1, *_image_shape(captioner)), _image_dtype(captioner)),
        ["a red circle."],
    )
    assert np.isfinite(scores).all()


def _image_shape(captioner) -> tuple[int, ...]:
    size = int(captioner.config.encoder.image_size)
    if captioner.takes_pixels:
        return (size, size, 3)
    return (int(captioner.config.encoder.features_dim),)


def _image_dtype(captioner):
    return np.uint8 if captioner.takes_pixels else np.float32


# -------------------------------------------------- the legacy tokenizer (old vocabularies)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A dog, running!", ["a", "dog", "running"]),
        ("", []),
        ("   \t\r\n ", []),
        ("...!?;:,-- ()[]{}\"'", []),
        ("A man's hat.", ["a", "man", "'s", "hat"]),
        ("Don't stop", ["do", "n't", "stop"]),
        ("I can't", ["i", "ca", "n't"]),
        ("we're here; they've gone, she'll come, I'm in", None),
        ("a red t-shirt", ["a", "red", "t-shirt"]),
        ("well -- known", ["well", "known"]),
        ("well--known", ["well", "known"]),
        ("- dash at start and end -", ["dash", "at", "start", "and", "end"]),
        ("2 dogs", ["2", "dogs"]),
        ("3.5 meters", ["3.5", "meters"]),
        ("1,000 birds", ["1,000", "birds"]),
        ("there are 2.", ["there", "are", "2"]),
        ("Café crème", ["café", "crème"]),
        ("東京 tower", ["東京", "tower"]),
        ("ＡＢＣ", ["abc"]),
        ("ｄｏｇ，ｃａｔ", ["dog", "cat"]),
        ("cafe\u0301", ["café"]),  # combining accent composed by NFKC
        ("a\tdog\r\non\u00a0a\u2003sofa", ["a", "dog", "on", "a", "sofa"]),
        ("The dog\u2019s ball", ["the", "dog", "'s", "ball"]),
        ("dogs' bowls", ["dogs", "bowls"]),
        ("o'clock", ["o'clock"]),
        ("snake_case & $5 50% #tag 🙂", ["snake", "case", "5", "50", "tag"]),
        ("soft\u00adhyphen zero\u200bwidth", ["softhyphen", "zerowidth"]),
        ("<unk> token", ["unk", "token"]),
        ("HELLO World", ["hello", "world"]),
    ],
)
def test_legacy_tokenize(text: str, expected: list[str] | None) -> None:
    if expected is None:
        expected = ["we", "'re", "here", "they", "'ve", "gone", "she", "'ll", "come"]
        expected += ["i", "'m", "in"]
    assert legacy_tokenize(text) == expected


def test_tokenize_returns_fresh_lists() -> None:
    for function in (tokenize, legacy_tokenize):
        first = function("a dog")
        first.append("x")
        assert function("a dog") == ["a", "dog"]


# ----------------------------------------------------------------------- reserved ids


def test_reserved_ids_fixed() -> None:
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    vocab = Vocabulary.build([["zebra"] * 10, ["apple"] * 3], min_count=1)
    assert vocab.words[:4] == (PAD, START, END, UNK)
    assert vocab.id_of(PAD) == PAD_ID
    assert vocab.id_of(START) == START_ID
    assert vocab.id_of(END) == END_ID
    assert vocab.id_of(UNK) == UNK_ID
    assert vocab.word_of(0) == "<pad>"
    assert vocab.word_of(3) == "<unk>"


def test_empty_vocabulary_has_only_reserved() -> None:
    vocab = Vocabulary.build([], min_count=1)
    assert len(vocab) == 4
    assert vocab.id_of("anything") == UNK_ID


# ------------------------------------------------------------------------------ build


def test_min_count_threshold_is_exact() -> None:
    captions = [["kept"]] * 5 + [["dropped"]] * 4 + [["many"]] * 9
    vocab = Vocabulary.build(captions, min_count=5)
    assert "kept" in vocab
    assert "dropped" not in vocab
    assert "many" in vocab
    assert vocab.id_of("dropped") == UNK_ID
    assert vocab.min_count == 5
    assert len(vocab) == 6


def test_order_is_count_then_alphabetical() -> None:
    captions = [["b", "a", "c", "d"], ["c", "b", "a"], ["d", "e"], ["e"], ["c"]]
    # counts: c=3, a=2, b=2, d=2, e=2
    vocab = Vocabulary.build(captions, min_count=1)
    assert vocab.words[4:] == ("c", "a", "b", "d", "e")
    shuffled = list(reversed(captions))
    assert Vocabulary.build(shuffled, min_count=1).words == vocab.words


def test_build_accepts_a_generator() -> None:
    vocab = Vocabulary.build((tokenize(t) for t in ["a dog", "a cat"]), min_count=1)
    assert vocab.words[4:] == ("a", "cat", "dog")


def test_max_size_includes_reserved() -> None:
    captions = [["w1"] * 5, ["w2"] * 4, ["w3"] * 3, ["w4"] * 2]
    vocab = Vocabulary.build(captions, min_count=1, max_size=6)
    assert len(vocab) == 6
    assert vocab.words[4:] == ("w1", "w2")
    assert len(Vocabulary.build(captions, min_count=1, max_size=4)) == 4
    assert len(Vocabulary.build(captions, min_count=1, max_size=100)) == 8


@pytest.mark.parametrize("max_size", [3, 0, -1])
def test_max_size_too_small(max_size: int) -> None:
    with pytest.raises(MrnnError, match="max_size"):
        Vocabulary.build([["a"]], min_count=1, max_size=max_size)


@pytest.mark.parametrize("min_count", [0, -3])
def test_min_count_below_one_rejected(min_count: int) -> None:
    with pytest.raises(MrnnError, match="min_count"):
        Vocabulary.build([["a"]], min_count=min_count)


def test_reserved_strings_in_text_not_duplicated() -> None:
    captions = [["<unk>", "<pad>", "<start>", "<end>", "dog"]] * 3
    vocab = Vocabulary.build(captions, min_count=1)
    assert vocab.words == (PAD, START, END, UNK, "dog")
    # A literal reserved string in the text is an unknown word, never a control id.
    assert vocab.encode(["<pad>", "<end>", "<start>", "<unk>", "dog"], 10) == [
        START_ID,
        UNK_ID,
        UNK_ID,
        UNK_ID,
        UNK_ID,
        4,
        END_ID,
    ]


def test_constructor_validates() -> None:
    with pytest.raises(MrnnError, match="reserved"):
        Vocabulary(words=("a", "b", "c", "d"), min_count=1)
    with pytest.raises(MrnnError, match="duplicate"):
        Vocabulary(words=(PAD, START, END, UNK, "a", "a"), min_count=1)


# ---------------------------------------------------------------------- lookups/encode


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.build([["a", "dog", "runs"], ["a", "cat"], ["a", "dog"]], min_count=1)


def test_lookup(vocab: Vocabulary) -> None:
    assert vocab.words == (PAD, START, END, UNK, "a", "dog", "cat", "runs")
    assert vocab.id_of("dog") == 5
    assert vocab.word_of(5) == "dog"
    assert vocab.id_of("giraffe") == UNK_ID
    assert "giraffe" not in vocab
    assert "cat" in vocab
    assert len(vocab) == 8
    with pytest.raises(MrnnError, match="out of range"):
        vocab.word_of(8)


def test_encode_unknown_and_truncation(vocab: Vocabulary) -> None:
    assert vocab.encode(["a", "giraffe", "runs"], 10) == [START_ID, 4, UNK_ID, 7, END_ID]
    assert vocab.encode(["a", "dog", "runs", "a", "cat"], 2) == [START_ID, 4, 5, END_ID]
    assert vocab.encode([], 3) == [START_ID, END_ID]
    assert vocab.encode(["a", "dog"], 0) == [START_ID, END_ID]
    with pytest.raises(MrnnError, match="max_words"):
        vocab.encode(["a"], -1)


def test_encode_batch_padding(vocab: Vocabulary) -> None:
    batch = vocab.encode_batch([["a", "dog", "runs", "a"], ["cat"], []], max_words=3)
    assert batch.dtype == np.int32
    assert batch.shape == (3, 5)
    np.testing.assert_array_equal(
        batch,
        [
            [START_ID, 4, 5, 7, END_ID],
            [START_ID, 6, END_ID, PAD_ID, PAD_ID],
            [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID],
        ],
    )
    empty = vocab.encode_batch([], max_words=4)
    assert empty.shape == (0, 6)
    assert empty.dtype == np.int32


def test_decode(vocab: Vocabulary) -> None:
    assert vocab.decode([START_ID, 4, 5, END_ID, 6, 6]) == ["a", "dog"]
    assert vocab.decode([4, 5, 7]) == ["a", "dog", "runs"]
    assert vocab.decode([START_ID, 4, PAD_ID, 5]) == ["a"]
    assert vocab.decode([START_ID, UNK_ID, 6]) == ["<unk>", "cat"]
    assert vocab.decode([]) == []
    assert vocab.decode(np.array([START_ID, 6, END_ID, 0], dtype=np.int32)) == ["cat"]
    assert vocab.decode(np.array([START_ID, 6, 5], dtype=np.int64)) == ["cat", "dog"]


def test_decode_round_trips_encode_batch(vocab: Vocabulary) -> None:
    captions = [["a", "dog", "runs"], ["cat"]]
    batch = vocab.encode_batch(captions, max_words=5)
    assert [vocab.decode(row) for row in batch] == captions


def test_decode_jax_array(vocab: Vocabulary) -> None:
    jnp = pytest.importorskip("jax.numpy")
    assert vocab.decode(jnp.array([START_ID, 4, 6, END_ID])) == ["a", "cat"]


def test_decode_errors(vocab: Vocabulary) -> None:
    with pytest.raises(MrnnError, match="out of range"):
        vocab.decode([START_ID, 4, 99])
    with pytest.raises(MrnnError, match="out of range"):
        vocab.decode([START_ID, -1])
    with pytest.raises(MrnnError, match="1-D"):
        vocab.decode(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(MrnnError, match="integer"):
        vocab.decode(np.array([1.0, 4.5]))
    # ids after END are not looked at
    assert vocab.decode([START_ID, 4, END_ID, 99]) == ["a"]


# ------------------------------------------------------------------------ persistence


def test_json_round_trip(vocab: Vocabulary) -> None:
    d = vocab.to_json()
    assert d["format_version"] == 2 and d["tokenizer"] == "ptb"
    assert d["words"][:4] == [PAD, START, END, UNK]
    again = Vocabulary.from_json(json.loads(json.dumps(d)))
    assert again == vocab
    assert again.id_of("runs") == vocab.id_of("runs")


def test_save_load_round_trip(tmp_path, vocab: Vocabulary) -> None:
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.words == vocab.words
    assert loaded.min_count == vocab.min_count
    assert json.loads(path.read_text(encoding="utf-8"))["format_version"] == 2
    # no temporary files left behind
    assert os.listdir(path.parent) == ["vocab.json"]


def test_save_overwrites_and_keeps_unicode(tmp_path) -> None:
    path = tmp_path / "vocab.json"
    Vocabulary.build([["old"]], min_count=1).save(str(path))
    new = Vocabulary.build([["café", "東京"]], min_count=1)
    new.save(str(path))
    assert Vocabulary.load(str(path)) == new


def test_load_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(MrnnError, match="no such file") as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_load_corrupt_json(tmp_path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text('{"format_version": 1, "words": ["<pad>"', encoding="utf-8")
    with pytest.raises(MrnnError, match="not valid JSON") as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_load_binary_garbage(tmp_path) -> None:
    path = tmp_path / "vocab.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MrnnError) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([1, 2], "JSON object"),
        ({"format_version": 3, "min_count": 1, "words": [PAD, START, END, UNK]}, "format_version"),
        (
            {
                "format_version": 2,
                "tokenizer": "x",
                "min_count": 1,
                "words": [PAD, START, END, UNK],
            },
            "tokenizer",
        ),
        ({"min_count": 1, "words": [PAD, START, END, UNK]}, "format_version"),
        ({"format_version": 1, "words": [PAD, START, END, UNK]}, "min_count"),
        ({"format_version": 1, "min_count": 1}, "words"),
        ({"format_version": 1, "min_count": 1, "words": "abc"}, "words"),
        ({"format_version": 1, "min_count": 1, "words": [START, PAD, END, UNK]}, "reserved"),
        ({"format_version": 1, "min_count": 1, "words": [PAD, START, END]}, "reserved"),
        ({"format_version": 1, "min_count": 1, "words": [PAD, START, END, UNK, "a", "a"]}, "dup"),
        ({"format_version": 1, "min_count": 1, "words": [PAD, START, END, UNK, "a", UNK]}, "dup"),
        ({"format_version": 1, "min_count": 1, "words": [PAD, START, END, UNK, 7]}, "string"),
        ({"format_version": 1, "min_count": 1, "words": [PAD, START, END, UNK, ""]}, "string"),
        ({"format_version": 1, "min_count": 0, "words": [PAD, START, END, UNK]}, "min_count"),
    ],
)
def test_from_json_validation(data, problem: str) -> None:
    with pytest.raises(MrnnError, match=problem):
        Vocabulary.from_json(data)


def test_load_invalid_vocabulary_names_path(tmp_path) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"format_version": 1, "min_count": 1, "words": ["a"]}))
    with pytest.raises(MrnnError, match="reserved") as info:
        Vocabulary.load(path)
    assert str(info.value).startswith(str(path))
