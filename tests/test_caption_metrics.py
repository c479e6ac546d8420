"""Tests of the coco-caption metrics wrapper (mrnn_jax/evaluation/coco_metrics.py).

The scores come from pycocoevalcap's own scorers; these tests pin down how they are called
(tokenisation, corpus versus per-image values, empty captions, METEOR's Java process) by
comparing with values worked out by hand. METEOR starts a JVM that loads its paraphrase
table (several seconds), so one process is shared by the whole module.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest

from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import coco_metrics
from mrnn_jax.evaluation.coco_metrics import (
    SCORE_NAMES,
    SPICE_REASON,
    CaptionScores,
    MeteorScorer,
    load_results,
    save_results,
    score_captions,
)
from mrnn_jax.text.ptb_tokenizer import PTB_PUNCTUATIONS, ptb_tokenize

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.tokenizer import ptbtokenizer  # noqa: E402

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(JAVA is None, reason="java is not on the PATH")
BLEU = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")


@pytest.fixture(scope="module")
def meteor():
    """One METEOR Java process for the module (its start-up is the slow part)."""
    if JAVA is None:
        pytest.skip("java is not on the PATH")
    scorer = MeteorScorer()
    yield scorer
    scorer.close()


def _no_meteor(hyps, refs, **kwargs) -> CaptionScores:
    return score_captions(hyps, refs, metrics=("BLEU", "ROUGE_L", "CIDEr"), **kwargs)


# --- ptb_tokenize ----------------------------------------------------------------------------

# Sentences whose coco-caption tokenisation (CoreNLP 3.4.1 PTBTokenizer -preserveLines
# -lowerCase, then PUNCTUATIONS removed) was read off the Java tool.
JAVA_CHECKED = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("THE CAT IS SLEEPING ON THE BED.", "the cat is sleeping on the bed"),
    (
        "A man's riding a horse while the dog doesn't look.",
        "a man 's riding a horse while the dog does n't look",
    ),
    (
        "They're \"happy\" (very) happy; aren't they?",
        "they 're happy -lrb- very -rrb- happy are n't they",
    ),
    (
        "I can't believe it won't stop, cannot stop, gonna stop.",
        "i ca n't believe it wo n't stop can not stop gon na stop",
    ),
    ("Café über naïve résumé at the Straße.", "café über naïve résumé at the straße"),
    (
        "Greek αβγ, Cyrillic жук and Chinese 中文 text",
        "greek αβγ cyrillic жук and chinese 中文 text",
    ),
    ("!!! ...", "!!!"),  # "!!!" is one PTB token, and not in PUNCTUATIONS
    (". , ; : -- ...", ""),
    (
        "A well-known 3.5-year-old child aged 12,000 days.",
        "a well-known 3.5-year-old child aged 12,000 days",
    ),
    (
        "It costs $5.50 & 10% off at 3:30 p.m. on 24/7 days",
        "it costs $ 5.50 & 10 % off at 3:30 p.m. on 24/7 days",
    ),
    (
        "Mr. Smith and Dr. Who in the U.S. flag... waves",
        "mr. smith and dr. who in the u.s. flag waves",
    ),
    ("Don’t use “smart” quotes — or ‘single’ ones…", "do n't use smart quotes or single ones"),
    ("A price of £5 and €10, ½ of a pizza", "a price of # 5 and $ 10 1/2 of a pizza"),
    ("An emoji 😀 and a tab\there", "an emoji and a tab here"),
    ("rock 'n' roll at 5 o'clock in the '90s", "rock 'n' roll at 5 o'clock in the '90s"),
    (
        "A TV (television) [x] {y} on a stand.",
        "a tv -lrb- television -rrb- -lsb- x -rsb- -lcb- y -rcb- on a stand",
    ),
    ("e-mail x-ray co-operate U-turn 1980s 2x4", "e-mail x-ray co-operate u-turn 1980s 2x4"),
    ("The kids' toys and James' car aren't here", "the kids toys and james car are n't here"),
    ('A sign that says "STOP." next to St. Louis', "a sign that says stop next to st. louis"),
    ("Two men -- one tall -- stand...", "two men one tall stand"),
    (
        "a/b test: 1/2 cup, 2 1/2 cups and 10-1/2 inches",
        "a/b test 1/2 cup 2\u00a01/2 cups and 10-1/2 inches",
    ),
    (
        "Email a@b.com or visit www.example.com #hashtag @user",
        "email a@b.com or visit www.example.com #hashtag @user",
    ),
    ("it's'   spaced    out   ", "it 's spaced out"),
]


@pytest.mark.parametrize(("text", "expected"), JAVA_CHECKED)
def test_ptb_tokenize_known_outputs(text: str, expected: str) -> None:
    assert ptb_tokenize(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "...", "?", "'' ``", "😀"])
def test_ptb_tokenize_empty_results(text: str) -> None:
    assert ptb_tokenize(text) == ""


def test_ptb_tokenize_output_is_single_spaced_lowercase() -> None:
    out = ptb_tokenize("  Two   DOGS,\nplaying\r\nin the   PARK!  ")
    assert out == "two dogs playing in the park"


def test_punctuations_are_coco_captions() -> None:
    assert tuple(ptbtokenizer.PUNCTUATIONS) == PTB_PUNCTUATIONS


@needs_java
def test_ptb_tokenize_matches_the_java_tokenizer(tmp_path) -> None:
    """Same output as the Stanford jar coco-caption ships, run the way PTBTokenizer runs it."""
    jar = os.path.join(
        os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    )
    if not os.path.exists(jar):
        pytest.skip(f"{jar} is missing")
    sentences = [text for text, _ in JAVA_CHECKED]
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(sentences), encoding="utf-8")
    cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer"]
    done = subprocess.run(
        [*cmd, "-preserveLines", "-lowerCase", str(path)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.decode("utf-8").split("\n")
    # The post-processing of ptbtokenizer.PTBTokenizer.tokenize.
    java = [
        " ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS)
        for line in lines[: len(sentences)]
    ]
    assert [ptb_tokenize(s) for s in sentences] == java


# --- BLEU, ROUGE-L, CIDEr-D ------------------------------------------------------------------

CORPUS_REFS = {
    1: ["a man riding a wave on a surfboard", "a surfer rides a large wave"],
    2: ["two dogs playing with a frisbee in the park", "dogs chase a red frisbee on the grass"],
    3: ["a plate of food with broccoli and rice", "a dinner plate with rice and vegetables"],
    4: ["a red bus parked on a city street", "a double decker bus on the street"],
}
CORPUS_REFS_12 = {1: CORPUS_REFS[1], 2: CORPUS_REFS[2]}


def test_identical_captions_score_one() -> None:
    single = {k: [refs[0]] for k, refs in CORPUS_REFS.items()}
    hyps = {k: refs[0].capitalize() + "." for k, refs in CORPUS_REFS.items()}
    for refs in (single, CORPUS_REFS):  # identical to the only reference / to one of several
        scores = _no_meteor(hyps, refs)
        for name in (*BLEU, "ROUGE-L"):
            assert scores.corpus[name] == pytest.approx(1.0, abs=1e-6), name
            for key in CORPUS_REFS:
                assert scores.per_image[key][name] == pytest.approx(1.0, abs=1e-6), (key, name)


def test_cider_d_is_highest_for_identical_captions() -> None:
    identical = {k: refs[0] for k, refs in CORPUS_REFS.items()}
    partly = {
        1: "a man riding a horse on a beach",
        2: "two cats playing with a ball in the park",
        3: "a plate of cake with cream and fruit",
        4: "a red car parked on a country road",
    }
    swapped = {
        1: CORPUS_REFS[2][0],
        2: CORPUS_REFS[3][0],
        3: CORPUS_REFS[4][0],
        4: CORPUS_REFS[1][0],
    }
    got = {
        name: score_captions(hyps, CORPUS_REFS, metrics=("CIDEr",))
        for name, hyps in [("identical", identical), ("partly", partly), ("swapped", swapped)]
    }
    best = got["identical"]
    assert best.corpus["CIDEr-D"] > 0
    for other in ("partly", "swapped"):
        assert best.corpus["CIDEr-D"] > got[other].corpus["CIDEr-D"], other
        for key in CORPUS_REFS:
            assert best.per_image[key]["CIDEr-D"] > got[other].per_image[key]["CIDEr-D"]
    assert got["partly"].corpus["CIDEr-D"] > got["swapped"].corpus["CIDEr-D"]


def test_bleu_by_hand() -> None:
    # hyp "the cat sat on the mat" (6 words), ref "the cat is on the mat" (6 words):
    #   unigrams: the x2 (ref has 2), cat, on, mat match; sat does not -> 5/6
    #   bigrams: the-cat, on-the, the-mat match; cat-sat, sat-on do not -> 3/5
    #   brevity penalty: c = r = 6 -> 1
    #   BLEU-1 = 5/6, BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2)
    one = _no_meteor({"a": "The cat sat on the mat."}, {"a": ["The cat is on the mat."]})
    assert one.corpus["BLEU-1"] == pytest.approx(5 / 6, rel=1e-6)
    assert one.corpus["BLEU-2"] == pytest.approx(math.sqrt(1 / 2), rel=1e-6)
    assert one.per_image["a"]["BLEU-2"] == pytest.approx(math.sqrt(1 / 2), rel=1e-6)

    # Adding hyp "a dog runs" (3 words) for ref "a dog is running fast" (5 words):
    #   unigrams a, dog match -> 2/3; bigram a-dog matches, dog-runs not -> 1/2.
    # coco-caption's BLEU is corpus-level: counts and lengths are summed before dividing,
    #   p1 = (5 + 2) / (6 + 3) = 7/9,  p2 = (3 + 1) / (5 + 2) = 4/7,
    #   c = 9, r = 11 -> brevity penalty exp(1 - 11/9) = exp(-2/9),
    #   BLEU-1 = 7/9 exp(-2/9), BLEU-2 = sqrt(7/9 * 4/7) exp(-2/9) = 2/3 exp(-2/9),
    # which is not the mean of the per-image values. The toolkit's smoothing (1e-15 added to
    # the matches, 1e-9 to the counts) changes these by ~1e-10 relative, well inside 1e-6.
    two = _no_meteor(
        {"a": "the cat sat on the mat", "b": "a dog runs"},
        {"a": ["the cat is on the mat"], "b": ["a dog is running fast"]},
    )
    penalty = math.exp(-2 / 9)
    assert two.corpus["BLEU-1"] == pytest.approx(7 / 9 * penalty, rel=1e-6)
    assert two.corpus["BLEU-2"] == pytest.approx(2 / 3 * penalty, rel=1e-6)
    # per image b: p1 = 2/3, p2 = 1/2, brevity penalty exp(1 - 5/3)
    assert two.per_image["b"]["BLEU-1"] == pytest.approx(2 / 3 * math.exp(-2 / 3), rel=1e-6)
    assert two.per_image["b"]["BLEU-2"] == pytest.approx(
        math.sqrt(2 / 3 * 1 / 2) * math.exp(-2 / 3), rel=1e-6
    )
    mean_bleu1 = (two.per_image["a"]["BLEU-1"] + two.per_image["b"]["BLEU-1"]) / 2
    assert two.corpus["BLEU-1"] != pytest.approx(mean_bleu1, rel=1e-3)


def test_rouge_l_by_hand() -> None:
    # hyp "a cat on a mat" (5 words), ref "a black cat sat on the mat" (7 words):
    #   LCS = "a cat on mat" = 4 -> P = 4/5, R = 4/7
    #   F = (1 + b^2) P R / (R + b^2 P) with b = 1.2
    beta2 = 1.2**2

    def f_measure(p: float, r: float) -> float:
        return (1 + beta2) * p * r / (r + beta2 * p)

    one = score_captions(
        {7: "A cat on a mat."}, {7: ["A black cat sat on the mat."]}, metrics=("ROUGE_L",)
    )
    assert one.corpus["ROUGE-L"] == pytest.approx(f_measure(4 / 5, 4 / 7), rel=1e-9)
    assert one.corpus["ROUGE-L"] == pytest.approx(0.647215, abs=1e-6)
    # With a second reference "cat on a mat" (LCS 4 -> P = 4/5, R = 4/4) coco-caption takes
    # the best precision and the best recall separately: P = 4/5, R = 1.
    two = score_captions(
        {7: "a cat on a mat"},
        {7: ["a black cat sat on the mat", "cat on a mat"]},
        metrics=("ROUGE_L",),
    )
    assert two.per_image[7]["ROUGE-L"] == pytest.approx(f_measure(4 / 5, 1.0), rel=1e-9)


def test_empty_unicode_and_punctuation_only_captions() -> None:
    refs = {
        "empty": ["a man riding a horse on the beach"],
        "unicode": ["café über naïve", "a café in paris"],
        "bangs": ["a man shouting at a dog"],
        "dots": ["a man shouting at a dog"],
        "ok": ["a cat on a mat"],
    }
    hyps = {
        "empty": "",
        "unicode": "Café über naïve.",
        "bangs": "!!! ...",
        "dots": ". , ...",
        "ok": "a cat on the mat",
    }
    scores = _no_meteor(hyps, refs)
    assert set(scores.per_image) == set(refs)
    for key in ("empty", "dots"):  # empty after tokenisation
        for name in (*BLEU, "ROUGE-L", "CIDEr-D"):
            assert scores.per_image[key][name] == 0.0, (key, name)
    # "!!!" is a word that matches nothing: BLEU is only the toolkit's 1e-15 smoothing.
    for name in BLEU:
        assert scores.per_image["bangs"][name] < 1e-9
    assert scores.per_image["bangs"]["ROUGE-L"] == 0.0
    assert scores.per_image["bangs"]["CIDEr-D"] == 0.0
    assert scores.per_image["unicode"]["ROUGE-L"] == pytest.approx(1.0)
    assert scores.per_image["unicode"]["BLEU-3"] == pytest.approx(1.0, abs=1e-6)
    assert scores.per_image["unicode"]["CIDEr-D"] > 0
    assert all(math.isfinite(v) for v in scores.corpus.values())


def test_empty_hypothesis_counts_against_corpus_bleu() -> None:
    hyps = {1: "the cat sat on the mat", 2: ""}
    refs = {1: ["the cat is on the mat"], 2: ["a dog is running fast"]}
    with_empty = _no_meteor(hyps, refs)
    alone = _no_meteor({1: hyps[1]}, {1: refs[1]})
    # The empty caption adds its reference length: brevity penalty exp(1 - 11/6).
    assert with_empty.corpus["BLEU-1"] == pytest.approx(5 / 6 * math.exp(1 - 11 / 6), rel=1e-6)
    assert with_empty.corpus["BLEU-1"] < alone.corpus["BLEU-1"]


def test_result_layout_and_metric_choice() -> None:
    hyps = {1: "a man riding a wave", "img.jpg": "two dogs in the park"}
    refs = {1: ["a man riding a wave on a surfboard"], "img.jpg": ["two dogs playing in a park"]}
    only_bleu = score_captions(hyps, refs, metrics=["bleu"])
    assert list(only_bleu.corpus) == list(BLEU)
    assert only_bleu.unavailable == {"SPICE": SPICE_REASON}
    assert set(only_bleu.per_image) == {1, "img.jpg"}  # key types kept
    assert all(isinstance(v, float) for v in only_bleu.per_image[1].values())
    three = _no_meteor(hyps, refs)
    assert list(three.corpus) == [n for n in SCORE_NAMES if n != "METEOR"]
    assert "SPICE" in three.unavailable
    with pytest.raises(MrnnError, match="unknown caption metric 'BLUE'"):
        score_captions(hyps, refs, metrics=("BLUE",))


def test_mismatched_keys_are_an_error_naming_them() -> None:
    refs = {i: ["a cat"] for i in range(10)}
    hyps = {i: "a cat" for i in range(3, 12)}
    with pytest.raises(MrnnError) as err:
        _no_meteor(hyps, refs)
    message = str(err.value)
    assert "10, 11" in message  # hypotheses without references
    assert "0, 1, 2" in message  # references without a hypothesis
    assert "\n" not in message


def test_missing_or_malformed_references_are_errors() -> None:
    with pytest.raises(MrnnError, match="image 'b' has no reference captions"):
        _no_meteor({"a": "a cat", "b": "a dog"}, {"a": ["a cat"], "b": []})
    with pytest.raises(MrnnError, match="list of strings"):
        _no_meteor({"a": "a cat"}, {"a": "a cat"})
    with pytest.raises(MrnnError, match="not a str"):
        _no_meteor({"a": None}, {"a": ["a cat"]})
    with pytest.raises(MrnnError, match="no captions"):
        _no_meteor({}, {})


# --- METEOR ----------------------------------------------------------------------------------


@needs_java
def test_meteor_is_a_real_score(meteor: MeteorScorer) -> None:
    hyps = {1: "a man riding a wave on a surfboard", 2: "a dog plays with a frisbee"}
    scores = score_captions(hyps, CORPUS_REFS_12, meteor=meteor)
    assert "METEOR" not in scores.unavailable
    value = scores.corpus["METEOR"]
    assert isinstance(value, float) and 0.0 < value <= 1.0
    assert scores.per_image[1]["METEOR"] > scores.per_image[2]["METEOR"] > 0.0
    assert list(scores.corpus) == list(SCORE_NAMES)


@needs_java
def test_meteor_of_an_empty_caption_counts_as_zero(meteor: MeteorScorer) -> None:
    good = {1: "a man riding a wave on a surfboard"}
    alone = score_captions(good, {1: CORPUS_REFS[1]}, metrics=("METEOR",), meteor=meteor)
    with_empty = score_captions(
        {**good, 2: "!"}, CORPUS_REFS_12, metrics=("METEOR",), meteor=meteor
    )
    assert with_empty.per_image[2]["METEOR"] == 0.0  # a score, not None
    assert "METEOR" not in with_empty.unavailable
    # The empty caption still counts: its references lower the corpus recall.
    assert alone.corpus["METEOR"] == pytest.approx(1.0)
    assert with_empty.corpus["METEOR"] < 0.75


def test_meteor_without_java_is_none_with_a_reason(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    scores = score_captions({1: "a cat on a mat"}, {1: ["a cat on the mat"]})
    assert scores.corpus["METEOR"] is None
    assert "java" in scores.unavailable["METEOR"]
    assert "METEOR" not in scores.per_image[1]
    assert scores.corpus["BLEU-1"] > 0  # the other metrics still ran


@needs_java
def test_meteor_subprocess_failure_is_none_with_a_reason(monkeypatch) -> None:
    from pycocoevalcap.meteor import meteor as coco_meteor

    monkeypatch.setattr(coco_meteor, "METEOR_JAR", "no-such-meteor.jar")
    scores = score_captions({1: "a cat on a mat"}, {1: ["a cat on the mat"]})
    assert scores.corpus["METEOR"] is None
    assert scores.unavailable["METEOR"].startswith("METEOR failed")
    assert scores.corpus["ROUGE-L"] > 0


# --- results files ---------------------------------------------------------------------------


def test_results_round_trip_keeps_id_types(tmp_path) -> None:
    path = tmp_path / "results.json"
    captions = {391895: "a man riding a bike.", "1000268201_693b08cb0e.jpg": "a café", 7: ""}
    save_results(path, captions)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == [{"image_id": k, "caption": v} for k, v in captions.items()]
    loaded = load_results(path)
    assert loaded == captions
    assert [type(k) for k in loaded] == [int, str, int]
    save_results(path, {1: "replaced"})  # overwrites in place, no temp files left behind
    assert load_results(path) == {1: "replaced"}
    assert os.listdir(tmp_path) == ["results.json"]


def test_save_results_rejects_bad_ids(tmp_path) -> None:
    path = tmp_path / "results.json"
    with pytest.raises(MrnnError, match="results.json"):
        save_results(path, {1.5: "a cat"})
    with pytest.raises(MrnnError, match="results.json"):
        save_results(path, {True: "a cat"})
    assert not path.exists()


def test_load_results_duplicate_ids(tmp_path) -> None:
    path = tmp_path / "dup.json"
    entries = [{"image_id": 3, "caption": "a"}, {"image_id": 4, "caption": "b"}]
    path.write_text(json.dumps([*entries, {"image_id": 3, "caption": "c"}]), encoding="utf-8")
    with pytest.raises(MrnnError, match=r"dup\.json: image_id 3 appears more than once"):
        load_results(path)


def test_load_results_bad_json(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"image_id": 1, "caption": "a cat"', encoding="utf-8")
    with pytest.raises(MrnnError, match=r"bad\.json: not valid JSON"):
        load_results(path)
    with pytest.raises(MrnnError, match=r"missing\.json"):
        load_results(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "data",
    [
        {"image_id": 1, "caption": "a cat"},
        [{"image_id": 1}],
        [{"caption": "a cat"}],
        [["image_id", 1]],
        [{"image_id": 1, "caption": 5}],
        [{"image_id": 1.0, "caption": "a cat"}],
        [{"image_id": None, "caption": "a cat"}],
    ],
)
def test_load_results_wrong_structure(tmp_path, data) -> None:
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(MrnnError, match=r"wrong\.json"):
        load_results(path)


def test_module_docstrings_say_what_cider_is() -> None:
    assert "CIDEr-D" in (coco_metrics.__doc__ or "")
    for func in (ptb_tokenize, score_captions, save_results, load_results, MeteorScorer):
        assert func.__doc__
