"""Caption metrics as the coco-caption toolkit computes them: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

The scores come from the toolkit's own scorers (``pycocoevalcap``, the pip package of
coco-caption; install the ``eval`` extra). Nothing is re-implemented here except the
tokeniser, :func:`mrnn_jax.text.ptb_tokenizer.ptb_tokenize`, a pure-Python copy of what
coco-caption's ``PTBTokenizer`` does, so that captions are scored without a JVM for it.

* BLEU-n (``pycocoevalcap.bleu.Bleu(4)``): corpus-level BLEU, as on the COCO server: n-gram
  counts and lengths are summed over all images before the precisions and the brevity
  penalty (closest reference length) are taken, with the toolkit's own smoothing (``1e-15``
  added to the matches and ``1e-9`` to the counts). The per-image values are the toolkit's
  sentence-level BLEU of each image (the second output of ``Bleu.compute_score``).
* METEOR (``pycocoevalcap.meteor.Meteor``): METEOR 1.5 in a Java subprocess (``java -jar
  meteor-1.5.jar - - -stdio -l en -norm``). It needs ``java`` on the PATH; without Java, or
  when the subprocess fails, METEOR is reported as ``None`` with the reason, never as 0.
* ROUGE-L (``pycocoevalcap.rouge.Rouge``): the LCS F-measure with beta = 1.2, precision and
  recall each maximised over the references; the corpus value is the mean over images.
* CIDEr-D (``pycocoevalcap.cider.Cider``): despite the class name this is CIDEr-D, the
  variant the COCO server reports as "CIDEr": tf-idf n-gram vectors (n = 1..4) whose
  hypothesis counts are clipped by the reference counts, a Gaussian length penalty
  (sigma = 6), the mean over references and n, times 10. The document frequencies are those
  of the references being scored, so an image's CIDEr-D depends on the rest of the corpus
  (and a one-image corpus always scores 0: every n-gram then has idf 0).
* SPICE is left out on purpose: it needs Stanford CoreNLP models that cannot be downloaded
  here; it is always listed in :attr:`CaptionScores.unavailable`.

Empty captions. An empty hypothesis (or one that is empty after tokenisation, such as
``". , ..."``) is passed on to every scorer unchanged, as coco-caption does: each of the four
pycocoevalcap 1.2 scorers was checked to score it 0 for its image without failing or
hanging (METEOR 1.5 included, also for empty references and all-empty corpora), while it
still counts in the corpus statistics (BLEU's brevity penalty, METEOR's recall). A METEOR
process that stops answering is given up after :data:`METEOR_TIMEOUT_S` seconds. Note that
runs like ``"!!!"`` or ``"?!"`` are single PTB tokens that are not in ``PUNCTUATIONS``, so
coco-caption (and this module) keep them as words.

Results files use coco-caption's format: a JSON list of ``{"image_id": ..., "caption": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import weakref
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mrnn_jax.errors import MrnnError
from mrnn_jax.files import write_text_atomic
from mrnn_jax.text.ptb_tokenizer import ptb_tokenize

# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------

#: Corpus score names, in report order.
SCORE_NAMES: tuple[str, ...] = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr-D",
)
#: Metric names accepted by :func:`score_captions` (coco-caption's spelling first).
METRICS: tuple[str, ...] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
_METRIC_ALIASES = {
    "BLEU": "BLEU",
    "METEOR": "METEOR",
    "ROUGEL": "ROUGE_L",
    "ROUGE": "ROUGE_L",
    "CIDER": "CIDEr",
    "CIDERD": "CIDEr",
    "SPICE": "SPICE",
}
SPICE_REASON = "needs Stanford CoreNLP models that cannot be downloaded here"
#: Seconds to wait for the METEOR subprocess before giving up on it.
METEOR_TIMEOUT_S = 300.0


@dataclass
class CaptionScores:
    """Scores of a set of captions.

    ``corpus`` maps each requested score name (``BLEU-1``..``BLEU-4``, ``METEOR``,
    ``ROUGE-L``, ``CIDEr-D``) to its corpus value, or to ``None`` when it could not be
    computed; ``per_image`` maps each image key to its per-image scores (the metrics that
    ran); ``unavailable`` maps each metric that did not run to the reason (SPICE always).
    """

    corpus: dict[str, float | None] = field(default_factory=dict)
    per_image: dict[Hashable, dict[str, float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Closes a subprocess's stdin and kills it; quiet when it has already gone."""
    with contextlib.suppress(Exception):
        if proc.stdin is not None:
            proc.stdin.close()
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(timeout=5)


class MeteorScorer:
    """A running METEOR 1.5 Java process that several :func:`score_captions` calls can share.

    Starting METEOR takes several seconds (JVM start and loading its paraphrase table), so
    callers that score repeatedly (or tests) should open one and pass it in. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self, timeout_s: float = METEOR_TIMEOUT_S) -> None:
        """Starts the METEOR subprocess (needs ``java`` on the PATH)."""
        from pycocoevalcap.meteor.meteor import Meteor  # the eval extra, when used

        class _Meteor(Meteor):  # type: ignore[misc]
            # Meteor.__del__ blocks forever on a lock that a failed compute_score keeps and
            # fails noisily at interpreter exit; the finaliser below stops the process instead.
            def __del__(self) -> None:
                pass

        self.timeout_s = timeout_s
        self._meteor: Any = _Meteor()
        self._broken: str | None = None
        self._finalizer = weakref.finalize(self, _stop_process, self._meteor.meteor_p)

    def score(
        self, gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]]
    ) -> tuple[float, list[float]]:
        """Corpus METEOR and the per-image scores, in the order of ``gts``; raises on failure."""
        if self._broken is not None:
            raise RuntimeError(self._broken)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = self._meteor.compute_score(dict(gts), dict(res))
            except BaseException as err:  # reported to the caller below
                outcome["error"] = err

        worker = threading.Thread(target=run, name="meteor", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._broken = f"the METEOR subprocess did not answer within {self.timeout_s:g} s"
            self.close()
            worker.join(5.0)
            raise RuntimeError(self._broken)
        if "error" in outcome:
            detail = self._stderr_tail()
            self._broken = f"the METEOR subprocess failed ({outcome['error']!r}){detail}"
            self.close()
            raise RuntimeError(self._broken)
        score, scores = outcome["value"]
        return float(score), [float(s) for s in scores]

    def _stderr_tail(self) -> str:
        """The last line the Java process wrote to stderr, if it has exited."""
        proc = self._meteor.meteor_p
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)
            lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
            if lines:
                return f": {lines[-1]}"
        return ""

    def close(self) -> None:
        """Stops the Java process (safe to call twice)."""
        if self._broken is None:
            self._broken = "the METEOR scorer was closed"
        self._finalizer()

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _normalise_metrics(metrics: Iterable[str]) -> list[str]:
    """Canonical metric names, in coco-caption spelling; MrnnError on unknown ones."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    chosen: list[str] = []
    for name in metrics:
        key = re.sub(r"[-_ ]", "", str(name)).upper()
        if key not in _METRIC_ALIASES:
            raise MrnnError(
                f"unknown caption metric {name!r}; choose from {', '.join(METRICS)}, SPICE"
            )
        canon = _METRIC_ALIASES[key]
        if canon not in chosen:
            chosen.append(canon)
    return chosen


def _show_keys(keys: Iterable[Hashable], limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_inputs(
    hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> None:
    """Raises MrnnError unless every image has one string hypothesis and >= 1 reference."""
    if not hypotheses and not references:
        raise MrnnError("no captions to score: the hypotheses and references are empty")
    no_refs = [k for k in hypotheses if k not in references]
    no_hyp = [k for k in references if k not in hypotheses]
    if no_refs or no_hyp:
        parts = []
        if no_refs:
            parts.append(f"{len(no_refs)} image(s) have no references: {_show_keys(no_refs)}")
        if no_hyp:
            parts.append(f"{len(no_hyp)} image(s) have no hypothesis: {_show_keys(no_hyp)}")
        raise MrnnError("hypotheses and references cover different images; " + "; ".join(parts))
    for key, hyp in hypotheses.items():
        if not isinstance(hyp, str):
            raise MrnnError(f"image {key!r}: the hypothesis is {type(hyp).__name__}, not a str")
        refs = references[key]
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise MrnnError(f"image {key!r}: the references must be a list of strings")
        if len(refs) == 0:
            raise MrnnError(f"image {key!r} has no reference captions")
        if not all(isinstance(r, str) for r in refs):
            raise MrnnError(f"image {key!r}: every reference caption must be a str")


def score_captions(
    hypotheses: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    metrics: Iterable[str] = METRICS,
    meteor: MeteorScorer | None = None,
) -> CaptionScores:
    """Scores one generated caption per image against that image's reference captions.

    ``hypotheses`` and ``references`` must have the same keys (any hashable image key);
    captions are raw text, tokenised here with :func:`ptb_tokenize`. ``metrics`` picks among
    ``"BLEU"`` (BLEU-1..4), ``"METEOR"``, ``"ROUGE_L"`` and ``"CIDEr"`` (CIDEr-D). METEOR uses
    ``meteor`` when given (see :class:`MeteorScorer`), else starts and stops its own Java
    process; it is ``None`` in ``corpus``, with the reason in ``unavailable``, when Java is
    not on the PATH or the subprocess fails. Raises :class:`MrnnError` when the keys differ
    (naming the first few), an image has no references, or a metric name is unknown.
    """
    chosen = _normalise_metrics(metrics)
    _check_inputs(hypotheses, references)
    bleu_cls, rouge_cls, cider_cls = _coco_scorers()
    keys = list(hypotheses)
    res = {k: [ptb_tokenize(hypotheses[k])] for k in keys}
    gts = {k: [ptb_tokenize(r) for r in references[k]] for k in keys}

    result = CaptionScores(per_image={k: {} for k in keys})
    result.unavailable["SPICE"] = SPICE_REASON

    def record(names: Sequence[str], corpus: Sequence[float], per_image: Sequence[Any]) -> None:
        for i, name in enumerate(names):
            result.corpus[name] = float(corpus[i])
            for key, value in zip(keys, per_image[i], strict=True):
                result.per_image[key][name] = float(value)

    if "BLEU" in chosen:
        score, scores = bleu_cls(4).compute_score(gts, res, verbose=0)
        record([f"BLEU-{n}" for n in range(1, 5)], score, scores)
    if "METEOR" in chosen:
        _score_meteor(gts, res, keys, result, meteor)
    if "ROUGE_L" in chosen:
        score, scores = rouge_cls().compute_score(gts, res)
        record(["ROUGE-L"], [score], [scores])
    if "CIDEr" in chosen:
        if not any(ref for refs in gts.values() for ref in refs):
            result.corpus["CIDEr-D"] = None
            result.unavailable["CIDEr-D"] = "every reference caption is empty after tokenisation"
        else:
            score, scores = cider_cls().compute_score(gts, res)
            record(["CIDEr-D"], [score], [scores])
    result.corpus = {name: result.corpus[name] for name in SCORE_NAMES if name in result.corpus}
    return result


def _coco_scorers() -> tuple[Any, Any, Any]:
    """coco-caption's Bleu, Rouge and Cider classes; MrnnError when pycocoevalcap is missing."""
    try:  # the eval extra: imported when captions are scored
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as err:
        raise MrnnError(
            f"caption metrics need pycocoevalcap ({err}); install it with: pip install -e '.[eval]'"
        ) from None
    return Bleu, Rouge, Cider


def _score_meteor(
    gts: Mapping[Hashable, list[str]],
    res: Mapping[Hashable, list[str]],
    keys: Sequence[Hashable],
    result: CaptionScores,
    meteor: MeteorScorer | None,
) -> None:
    """Adds METEOR to ``result``, or None and the reason when it cannot run."""
    result.corpus["METEOR"] = None
    if shutil.which("java") is None:
        result.unavailable["METEOR"] = "java was not found on the PATH (METEOR 1.5 is a Java jar)"
        return
    own = meteor is None
    try:
        if meteor is None:
            meteor = MeteorScorer()
        score, scores = meteor.score(gts, res)
        if len(scores) != len(keys):
            raise RuntimeError(f"METEOR returned {len(scores)} scores for {len(keys)} images")
    except Exception as err:
        result.unavailable["METEOR"] = f"METEOR failed: {err}"
        return
    finally:
        if own and meteor is not None:
            meteor.close()
    result.corpus["METEOR"] = score
    for key, value in zip(keys, scores, strict=True):
        result.per_image[key]["METEOR"] = value


# --------------------------------------------------------------------------------------
# coco-caption results files
# --------------------------------------------------------------------------------------


def _valid_image_id(image_id: object) -> bool:
    return isinstance(image_id, str) or (
        isinstance(image_id, int) and not isinstance(image_id, bool)
    )


def save_results(path: str | os.PathLike[str], captions: Mapping[int | str, str]) -> None:
    """Writes captions as a coco-caption results file, ``[{"image_id": ..., "caption": ...}]``.

    Image ids keep their type (int for COCO, str for file names). The file is replaced
    atomically, so a reader never sees half of it. Raises MrnnError naming the file for an
    id that is not an int or str or a caption that is not a str.
    """
    path = os.fspath(path)
    entries = []
    for image_id, caption in captions.items():
        if not _valid_image_id(image_id):
            raise MrnnError(f"{path}: image_id {image_id!r} is not an int or a str")
        if not isinstance(caption, str):
            raise MrnnError(f"{path}: the caption of image {image_id!r} is not a str")
        entries.append({"image_id": image_id, "caption": caption})
    text = json.dumps(entries, ensure_ascii=False) + "\n"
    write_text_atomic(path, text, "results file")


def load_results(path: str | os.PathLike[str]) -> dict[int | str, str]:
    """Reads a coco-caption results file into ``{image_id: caption}`` (ids keep their type).

    Raises MrnnError naming the file when it is missing, is not valid JSON, is not a list of
    objects each with an int or str ``image_id`` and a str ``caption``, or repeats an id.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MrnnError(f"{path}: results file not found") from None
    except json.JSONDecodeError as err:
        raise MrnnError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise MrnnError(f"{path}: cannot read the results file ({err})") from None
    if not isinstance(data, list):
        raise MrnnError(
            f"{path}: a results file must be a JSON list of "
            f'{{"image_id": ..., "caption": ...}} objects, not a {type(data).__name__}'
        )
    captions: dict[int | str, str] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise MrnnError(
                f'{path}: entry {i} is not an object with "image_id" and "caption" keys'
            )
        image_id, caption = entry["image_id"], entry["caption"]
        if not _valid_image_id(image_id):
            raise MrnnError(f"{path}: entry {i} has image_id {image_id!r}, not an int or a str")
        if not isinstance(caption, str):
            raise MrnnError(
                f"{path}: entry {i} (image {image_id!r}) has a caption that is not a str"
            )
        if image_id in captions:
            raise MrnnError(f"{path}: image_id {image_id!r} appears more than once (entry {i})")
        captions[image_id] = caption
    return captions
