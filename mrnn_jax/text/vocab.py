"""Caption tokenizer and word vocabulary.

One tokenizer for training and scoring: :func:`tokenize` is coco-caption's PTB tokenisation
(:func:`mrnn_jax.text.ptb_tokenizer.ptb_tokenize`, the Stanford PTB tokenizer followed by the
removal of coco-caption's punctuation tokens), split into words. The vocabulary is built from
exactly the tokens the scorers see in the references, so the model can produce every
reference word: ``p.m.`` stays ``p.m.``, ``$``, ``&``, ``%`` and ``#`` are words, brackets
become ``-lrb-`` / ``-rrb-`` (as on the COCO server), ``man's`` is ``man 's``, ``don't`` is
``do n't``; quotes, dashes and ``. , ; : ! ?`` are dropped.

Vocabularies record the tokenizer they were built with. Those written before this one have
none recorded and were built with :func:`legacy_tokenize` (punctuation and symbols dropped,
``a.m.`` -> ``a m``); :meth:`Vocabulary.tokenize` uses each vocabulary's own tokenizer, so
old checkpoints keep scoring and encoding text as they were trained.

The vocabulary maps words to integer ids; the four reserved tokens have fixed ids.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrnn_jax.errors import MrnnError
from mrnn_jax.files import write_text_atomic
from mrnn_jax.text.ptb_tokenizer import ptb_tokenize

PAD = "<pad>"
START = "<start>"
END = "<end>"
UNK = "<unk>"
PAD_ID = 0
START_ID = 1
END_ID = 2
UNK_ID = 3
RESERVED: tuple[str, ...] = (PAD, START, END, UNK)

FORMAT_VERSION = 2  # 2 records the tokenizer; 1 (no tokenizer recorded) is read as legacy
TOKENIZER = "ptb"
LEGACY_TOKENIZER = "legacy"
TOKENIZERS = (TOKENIZER, LEGACY_TOKENIZER)

_APOSTROPHES = frozenset("'\u2018\u2019\u02bc\u2032")
_HYPHENS = frozenset("-\u2010\u2011")
_NUMBER_JOINERS = frozenset(".,")
# Clitics the PTB tokenizer splits off the end of a word ("n't" is handled separately).
_CLITICS = ("'s", "'m", "'d", "'re", "'ve", "'ll")


def _char_kind(ch: str) -> str:
    """Classify a character: 'w' word, 'a' apostrophe, 'h' hyphen, 'j' number joiner,
    'z' ignorable (format characters, dropped without splitting), ' ' separator."""
    if ch in _APOSTROPHES:
        return "a"
    if ch in _HYPHENS:
        return "h"
    if ch in _NUMBER_JOINERS:
        return "j"
    category = unicodedata.category(ch)
    if category[0] in "LNM":
        return "w"
    if category == "Cf":
        return "z"
    return " "


def _split_clitics(word: str) -> list[str]:
    """Split one PTB clitic off the end of a word ("man's" -> ["man", "'s"])."""
    if len(word) > 3 and word.endswith("n't"):
        return [word[:-3], "n't"]
    for clitic in _CLITICS:
        if len(word) > len(clitic) and word.endswith(clitic):
            return [word[: -len(clitic)], clitic]
    return [word]


def tokenize(text: str) -> list[str]:
    """A caption's word tokens as the coco-caption scorers see them (lower-cased PTB tokens,
    coco-caption's punctuation removed); empty or punctuation-only text gives ``[]``."""
    return ptb_tokenize(text).split()


def legacy_tokenize(text: str) -> list[str]:
    """The tokenizer of vocabularies written before the tokenizer was recorded (format 1).

    NFKC-normalised, lower-cased words of letters, digits and marks, with inner hyphens,
    apostrophes and digit separators kept and PTB clitics split off; every other character
    (punctuation, ``$``, ``&``, brackets, the dots of ``a.m.``) separates words and is
    dropped. Kept only so that old checkpoints encode text as they were trained.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    kinds = [_char_kind(ch) for ch in text]
    tokens: list[str] = []
    word: list[str] = []
    n = len(text)
    prev_kind = " "  # kind of the last character appended to ``word``

    def flush() -> None:
        nonlocal prev_kind
        if word:
            tokens.extend(_split_clitics("".join(word)))
            word.clear()
        prev_kind = " "

    for i, (ch, kind) in enumerate(zip(text, kinds, strict=True)):
        if kind == "w":
            word.append(ch)
            prev_kind = "w"
        elif kind == "z":
            continue
        elif kind in "ahj" and prev_kind == "w":
            # A joiner stays inside the word only between two word characters
            # (ignoring zero-width format characters in between).
            j = i + 1
            while j < n and kinds[j] == "z":
                j += 1
            next_is_word = j < n and kinds[j] == "w"
            if kind == "j":
                keep = next_is_word and word[-1].isdigit() and text[j].isdigit()
            else:
                keep = next_is_word
            if keep:
                word.append({"a": "'", "h": "-"}.get(kind, ch))
                prev_kind = kind
            else:
                flush()
        else:
            flush()
    flush()
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """An ordered word list with the reserved tokens first, and word <-> id lookup.

    ``words[i]`` is the word with id ``i``; ``words[:4]`` is always
    ``("<pad>", "<start>", "<end>", "<unk>")``. ``min_count`` records the threshold the
    vocabulary was built with. Constructing one with a malformed word list raises
    :class:`MrnnError`.
    """

    words: tuple[str, ...]
    min_count: int = 5
    tokenizer: str = TOKENIZER
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        words = tuple(self.words)
        object.__setattr__(self, "words", words)
        problem = _word_list_problem(words)
        if problem is None:
            problem = _min_count_problem(self.min_count)
        if problem is None and self.tokenizer not in TOKENIZERS:
            problem = f"unknown tokenizer {self.tokenizer!r} (known: {', '.join(TOKENIZERS)})"
        if problem is not None:
            raise MrnnError(f"invalid vocabulary: {problem}")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(words)})

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        min_count: int = 5,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Build a vocabulary from tokenized captions.

        Keeps the words seen at least ``min_count`` times, most frequent first, ties in
        alphabetical order, after the four reserved tokens. ``max_size`` caps the total
        size, reserved tokens included. Reserved strings occurring in the text (a literal
        ``"<unk>"``, say) are not counted as words: they are never added twice, and
        :meth:`encode` maps them to ``UNK_ID``. Raises :class:`MrnnError` for
        ``min_count < 1`` or ``max_size < 4``.
        """
        problem = _min_count_problem(min_count)
        if problem is not None:
            raise MrnnError(f"vocabulary: {problem}")
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < len(RESERVED)
        ):
            raise MrnnError(
                f"vocabulary: max_size must be an integer >= {len(RESERVED)} "
                f"(the reserved tokens), got {max_size!r}"
            )
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for reserved in RESERVED:
            counts.pop(reserved, None)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            kept = kept[: max_size - len(RESERVED)]
        return cls(words=RESERVED + tuple(kept), min_count=min_count)

    def tokenize(self, text: str) -> list[str]:
        """``text``'s tokens under the tokenizer this vocabulary was built with."""
        return legacy_tokenize(text) if self.tokenizer == LEGACY_TOKENIZER else tokenize(text)

    def __len__(self) -> int:
        """Return the number of words, reserved tokens included."""
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        """Return whether ``word`` is in the vocabulary (reserved tokens included)."""
        return word in self._index

    def id_of(self, word: str) -> int:
        """Return the id of ``word``, or ``UNK_ID`` if it is not in the vocabulary.

        Reserved tokens return their own ids (``id_of("<pad>") == PAD_ID``).
        """
        return self._index.get(word, UNK_ID)

    def word_of(self, id_: int) -> str:
        """Return the word with id ``id_``; raises :class:`MrnnError` if out of range."""
        index = int(id_)
        if not 0 <= index < len(self.words):
            raise MrnnError(f"word id {index} is out of range for a vocabulary of {len(self)}")
        return self.words[index]

    def encode(self, tokens: Sequence[str], max_words: int) -> list[int]:
        """Return ``[START_ID, ids of the first max_words tokens..., END_ID]``.

        Unknown words and reserved strings in ``tokens`` become ``UNK_ID``.
        """
        _check_max_words(max_words)
        ids = [START_ID]
        for token in list(tokens)[:max_words]:
            index = self._index.get(token, UNK_ID)
            ids.append(UNK_ID if index < len(RESERVED) else index)
        ids.append(END_ID)
        return ids

    def encode_batch(self, token_lists: Sequence[Sequence[str]], max_words: int) -> np.ndarray:
        """Encode several captions into an int32 array of shape ``[N, max_words + 2]``.

        Row ``i`` is ``encode(token_lists[i], max_words)`` right-padded with ``PAD_ID``.
        """
        _check_max_words(max_words)
        out = np.full((len(token_lists), max_words + 2), PAD_ID, dtype=np.int32)
        for row, tokens in enumerate(token_lists):
            ids = self.encode(tokens, max_words)
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Any) -> list[str]:
        """Turn a sequence of ids (list, numpy or jax array) back into words.

        A leading ``START_ID`` is skipped and decoding stops at the first ``END_ID`` or
        ``PAD_ID``; ids after that are ignored. Any other id is mapped to its word (so
        ``UNK_ID`` gives ``"<unk>"``). Raises :class:`MrnnError` for an id out of range
        or ids that are not a 1-D sequence of integers.
        """
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise MrnnError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise MrnnError(f"decode expects integer ids, got dtype {arr.dtype}")
        values = [int(v) for v in arr.tolist()]
        if values and values[0] == START_ID:
            values = values[1:]
        words: list[str] = []
        for value in values:
            if value in (END_ID, PAD_ID):
                break
            words.append(self.word_of(value))
        return words

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (``format_version``, ``tokenizer``, ``min_count``,
        ``words``). A legacy vocabulary is written in format 1, as it was read."""
        if self.tokenizer == LEGACY_TOKENIZER:
            return {"format_version": 1, "min_count": self.min_count, "words": list(self.words)}
        return {
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tokenizer,
            "min_count": self.min_count,
            "words": list(self.words),
        }

    @classmethod
    def from_json(cls, d: Any) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_json` output.

        Raises :class:`MrnnError` naming the problem if the dict is malformed: wrong
        ``format_version``, reserved tokens missing or out of place, duplicate or
        non-string words, or a bad ``min_count``.
        """
        if not isinstance(d, dict):
            raise MrnnError(f"invalid vocabulary: expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise MrnnError(
                f"invalid vocabulary: unsupported format_version {version!r} "
                f"(expected 1 or {FORMAT_VERSION}; a newer mrnn-jax wrote it?)"
            )
        for key in ("words", "min_count"):
            if key not in d:
                raise MrnnError(f"invalid vocabulary: missing field {key!r}")
        words = d["words"]
        if not isinstance(words, list):
            raise MrnnError("invalid vocabulary: 'words' must be a list of strings")
        tokenizer = LEGACY_TOKENIZER if version == 1 else d.get("tokenizer")
        return cls(words=tuple(words), min_count=d["min_count"], tokenizer=tokenizer)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON to ``path``, atomically (readers never see a
        half-written file). Parent directories are created if needed."""
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n"
        write_text_atomic(path, text, "vocabulary")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Raises :class:`MrnnError` naming the path if the file is missing, unreadable,
        not valid JSON or not a valid vocabulary.
        """
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError as e:
            raise MrnnError(f"{source}: no such file") from e
        except UnicodeDecodeError as e:
            raise MrnnError(f"{source}: not a vocabulary file (not UTF-8 text)") from e
        except OSError as e:
            raise MrnnError(f"{source}: cannot read vocabulary ({e.strerror or e})") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MrnnError(
                f"{source}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); "
                "rebuild the vocabulary"
            ) from e
        try:
            return cls.from_json(data)
        except MrnnError as e:
            raise MrnnError(f"{source}: {e}") from e


def _word_list_problem(words: tuple[str, ...]) -> str | None:
    """Return a description of what is wrong with a word list, or None if it is valid."""
    if words[: len(RESERVED)] != RESERVED:
        return (
            f"the first {len(RESERVED)} words must be the reserved tokens "
            f"{list(RESERVED)}, got {list(words[: len(RESERVED)])}"
        )
    seen: set[str] = set()
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word:
            return f"word {i} must be a non-empty string, got {word!r}"
        if word in seen:
            return f"duplicate word {word!r} (id {i})"
        seen.add(word)
    return None


def _min_count_problem(min_count: object) -> str | None:
    """Return a description of what is wrong with min_count, or None if it is valid."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        return f"min_count must be an integer >= 1, got {min_count!r}"
    return None


def _check_max_words(max_words: int) -> None:
    """Raise MrnnError unless max_words is a non-negative integer."""
    if isinstance(max_words, bool) or not isinstance(max_words, int | np.integer) or max_words < 0:
        raise MrnnError(f"max_words must be an integer >= 0, got {max_words!r}")


def build_vocab(train_records: Iterable[Any], min_count: int) -> Vocabulary:
    """The vocabulary of the training captions (never the validation or test ones): every
    tokenised caption of ``train_records`` (:class:`~mrnn_jax.data.records.ImageRecord`)."""
    return Vocabulary.build([t for r in train_records for t in r.tokens], min_count=min_count)
