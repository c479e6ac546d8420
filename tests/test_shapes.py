"""Tests of the built-in ``shapes`` dataset (mrnn_jax/data/shapes.py)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from mrnn_jax.data import shapes
from mrnn_jax.data.shapes import (
    COLORS,
    HELD_OUT_PAIRS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TEMPLATES,
    Scene,
    ShapeObject,
)
from mrnn_jax.errors import MrnnError
from mrnn_jax.text.vocab import tokenize

# The closed vocabulary the captions may use, written out so that a new word fails a test.
FUNCTION_WORDS = {
    "a", "an", "the", "one", "single", "just", "only", "there", "is", "with", "it", "and",
}  # fmt: skip
RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
MAX_CAPTION_WORDS = 24  # the longest template gives 20; configs must decode at least that
FIELD = re.compile(r"\{(\w+)\}")


@pytest.fixture(scope="module")
def data() -> dict[str, shapes.ShapesSplit]:
    return shapes.load_shapes({"train": 300, "val": 100, "test": 500, "novel": 500}, seed=0)


def _relation(subject: ShapeObject, reference: ShapeObject) -> str:
    dx, dy = subject.x - reference.x, subject.y - reference.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _description(obj: ShapeObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def _expected_fields(scene: Scene) -> dict[str, str]:
    objects = scene.objects
    fields = {f"D{i}": _description(obj) for i, obj in enumerate(objects)}
    for i, obj in enumerate(objects[1:], start=1):
        fields[f"rel{i}0"] = _relation(obj, objects[0])
        fields[f"rel0{i}"] = _relation(objects[0], obj)
    return fields


def _applicable(count: int) -> list[int]:
    return [i for i, (_, counts) in enumerate(TEMPLATES) if count in counts]


def _expected_captions(scene: Scene) -> dict[str, int]:
    """Every caption this scene can get, mapped to the index of its template."""
    fields = _expected_fields(scene)
    out = {}
    for index in _applicable(len(scene.objects)):
        caption = re.sub(r"\ba (?=[aeiou])", "an ", TEMPLATES[index][0].format(**fields))
        assert caption not in out, caption  # two templates never word a scene the same way
        out[caption] = index
    return out


def _all_records(data):
    for split in data.values():
        yield from zip(split.records, split.scenes, strict=True)


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_data():
    a = shapes.make_split("test", 40, seed=7)
    b = shapes.make_split("test", 40, seed=7)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.records == b.records
    assert a.scenes == b.scenes


def test_different_seed_or_split_gives_different_data():
    a = shapes.make_split("train", 40, seed=0)
    b = shapes.make_split("train", 40, seed=1)
    c = shapes.make_split("val", 40, seed=0)
    assert not np.array_equal(a.images, b.images)
    assert [r.captions for r in a.records] != [r.captions for r in b.records]
    assert not np.array_equal(a.images, c.images)
    assert a.scenes != c.scenes


def test_split_does_not_depend_on_other_split_sizes_and_prefixes_agree():
    small = shapes.load_shapes({"train": 5, "test": 30}, seed=3)
    large = shapes.load_shapes({"train": 60, "test": 30}, seed=3)
    assert np.array_equal(small["test"].images, large["test"].images)
    assert small["test"].records == large["test"].records
    longer = shapes.make_split("test", 45, seed=3)
    assert np.array_equal(longer.images[:30], small["test"].images)
    assert longer.records[:30] == small["test"].records


# --- difficulty minimums -------------------------------------------------------------------


def test_difficulty_minimums(data):
    assert len(COLORS) >= 8
    assert len(SHAPES) >= 6
    assert {"red", "green", "blue", "yellow", "purple", "orange"} <= set(COLORS)
    assert {"circle", "square", "triangle", "diamond", "cross"} <= set(SHAPES)
    assert list(SIZES) == ["small", "medium", "large"]
    assert SIZES["small"] < SIZES["medium"] < SIZES["large"]
    assert RELATIONS == ("left of", "right of", "above", "below")
    assert len(TEMPLATES) >= 10
    assert len({text for text, _ in TEMPLATES}) == len(TEMPLATES)
    for count in (1, 2, 3):
        assert len(_applicable(count)) >= 6, count  # five references, five templates, a spare
    assert SPLITS == ("train", "val", "test", "novel")
    images = data["train"].images
    assert images.dtype == np.uint8
    assert images.shape == (300, 64, 64, 3)
    counts = [len(scene.objects) for scene in data["train"].scenes[:200]]
    assert set(counts) == {1, 2, 3}
    assert min(counts.count(n) for n in (1, 2, 3)) >= 30  # all three are common


def test_colours_are_well_separated_from_each_other_and_from_every_background_grey():
    rgb = {name: np.array(value, dtype=float) for name, value in COLORS.items()}
    for a, b in itertools.combinations(rgb, 2):
        assert np.linalg.norm(rgb[a] - rgb[b]) >= 80, (a, b)
    low, high = shapes._GREY_RANGE
    assert high - low >= 80  # light and dark backgrounds
    greys = np.arange(low, high + 1, dtype=float)[:, None].repeat(3, axis=1)
    for name, value in rgb.items():
        assert np.linalg.norm(value - greys, axis=1).min() >= 80, name
        grey = np.full(3, value.mean())
        assert np.linalg.norm(value - grey) >= 80, name  # saturated: never mistaken for grey


def test_objects_have_distinct_sizes_largest_first_and_do_not_overlap(data):
    for _, scene in _all_records(data):
        sizes = [SIZES[o.size] for o in scene.objects]
        assert sizes == sorted(set(sizes), reverse=True)
        pairs = [(o.colour, o.shape) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)
        for o in scene.objects:
            half = SIZES[o.size] * 64 / 2
            assert half <= o.x <= 64 - half and half <= o.y <= 64 - half
        for a, b in itertools.combinations(scene.objects, 2):
            reach = (SIZES[a.size] + SIZES[b.size]) * 64 / 2
            assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach, (a, b)
        for other in scene.objects[1:]:  # the relation to the largest is clear-cut
            dx, dy = other.x - scene.objects[0].x, other.y - scene.objects[0].y
            assert abs(abs(dx) - abs(dy)) >= 5.0, (scene.objects[0], other)


# --- held-out pairs and splits -------------------------------------------------------------


def test_held_out_pairs_are_a_fifth_and_leave_every_word_in_training():
    all_pairs = set(itertools.product(COLORS, SHAPES))
    assert isinstance(HELD_OUT_PAIRS, frozenset)
    assert all_pairs >= HELD_OUT_PAIRS
    assert len(HELD_OUT_PAIRS) >= 0.2 * len(all_pairs)
    seen = all_pairs - HELD_OUT_PAIRS
    for colour in COLORS:
        assert sum(c == colour for c, _ in seen) >= 3, colour
    for shape in SHAPES:
        assert sum(s == shape for _, s in seen) >= 4, shape
    assert {c for c, _ in HELD_OUT_PAIRS} == set(COLORS)  # every colour has a novel pair


def test_train_val_test_never_show_a_held_out_pair(data):
    seen_pairs = set()
    for split in ("train", "val", "test"):
        for scene in data[split].scenes:
            for obj in scene.objects:
                assert (obj.colour, obj.shape) not in HELD_OUT_PAIRS, (split, obj)
                seen_pairs.add((obj.colour, obj.shape))
    # Every allowed pair does occur, so the held-out ones are missing by design, not chance.
    assert seen_pairs == set(itertools.product(COLORS, SHAPES)) - HELD_OUT_PAIRS


def test_novel_largest_object_is_always_held_out(data):
    largest = [(s.objects[0].colour, s.objects[0].shape) for s in data["novel"].scenes]
    assert all(pair in HELD_OUT_PAIRS for pair in largest)
    assert set(largest) == HELD_OUT_PAIRS
    # The other objects are unrestricted: some of them are ordinary training pairs.
    others = {(o.colour, o.shape) for s in data["novel"].scenes for o in s.objects[1:]}
    assert others - HELD_OUT_PAIRS


# --- captions ------------------------------------------------------------------------------


def test_every_caption_contains_the_largest_phrase(data):
    for record, scene in _all_records(data):
        phrase = scene.largest_phrase()
        largest = scene.objects[0]
        assert phrase == f"{largest.colour} {largest.shape}"
        for caption in record.captions:
            assert f" {phrase} " in f" {caption} ", (caption, phrase)


def test_every_caption_describes_every_object_and_its_relation_to_the_largest(data):
    for record, scene in _all_records(data):
        largest, others = scene.objects[0], scene.objects[1:]
        for caption in record.captions:
            padded = f" {caption} "
            for obj in scene.objects:  # size, colour and shape, as one phrase, exactly once
                assert padded.count(f" {_description(obj)} ") == 1, (caption, obj)
            mentioned = [w for w in caption.split() if w in SIZES]
            assert len(mentioned) == len(scene.objects), caption  # no phantom objects
            for obj in others:  # "<other> [is] <rel> ..." or "<largest> [is] <rel> ... <other>"
                d_obj, d_big = re.escape(_description(obj)), re.escape(_description(largest))
                direct = rf" {d_obj} (?:is )?{_relation(obj, largest)} "
                inverse = rf" {d_big} (?:is )?(?:.* )?{_relation(largest, obj)} (?:a|the) {d_obj} "
                assert re.search(direct, padded) or re.search(inverse, padded), (caption, obj)
            relation_words = [w for w in caption.split() if w in RELATION_WORDS]
            assert len(relation_words) == len(others), caption


def test_five_references_from_five_different_templates(data):
    used = set()
    for record, scene in _all_records(data):
        assert len(record.captions) == 5
        assert len(set(record.captions)) == 5
        expected = _expected_captions(scene)
        # Each caption is one template filled with this scene's descriptions and relations.
        assert set(record.captions) <= set(expected), (set(record.captions) - set(expected), scene)
        used.update(expected[caption] for caption in record.captions)
    assert used == set(range(len(TEMPLATES)))


def test_templates_mention_every_object_and_relation_with_few_fixed_words():
    for text, counts in TEMPLATES:
        assert len(counts) == 1, text  # each template is written for one object count
        count = counts[0]
        fields = FIELD.findall(text)
        assert sorted(f for f in fields if f.startswith("D")) == [f"D{i}" for i in range(count)]
        relations = [f for f in fields if f.startswith("rel")]
        assert len(relations) == count - 1, text
        assert {f[3:].replace("0", "") for f in relations} == {str(i) for i in range(1, count)}
        assert all(f in {"rel10", "rel20", "rel01", "rel02"} for f in relations), text
        fixed = FIELD.sub(" ", text).split()
        assert set(fixed) <= FUNCTION_WORDS, text
        assert len(fixed) <= 3 + 2 * (count - 1), text  # mostly content, little phrasing


def test_most_words_carry_image_content(data):
    content = {"of"} | set(COLORS) | set(SHAPES) | set(SIZES) | set(RELATION_WORDS)
    words = [w for r in data["test"].records for c in r.captions for w in c.split()]
    assert sum(w in content for w in words) / len(words) > 0.7


def test_template_floor_perplexity_is_low(data):
    # A model that sees the image still pays for the choice of template: ln(#templates) per
    # caption, spread over its words and end token.
    nats = tokens = 0.0
    for record, scene in zip(data["test"].records, data["test"].scenes, strict=True):
        for caption in record.captions:
            nats += np.log(len(_applicable(len(scene.objects))))
            tokens += len(caption.split()) + 1
    assert np.exp(nats / tokens) < 1.3


def test_captions_use_a_small_closed_vocabulary_and_proper_articles(data):
    vocabulary = FUNCTION_WORDS | {"of"} | set(RELATION_WORDS) | set(COLORS) | set(SHAPES)
    vocabulary |= set(SIZES)
    assert len(vocabulary) < 50
    words = set()
    longest = 0
    for record, _ in _all_records(data):
        for caption in record.captions:
            assert caption == caption.lower().strip()
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", caption), caption
            longest = max(longest, len(caption.split()))
            assert not re.search(r"\ba [aeiou]", caption), caption
            assert not re.search(r"\ban [^aeiou]", caption), caption
            assert not re.search(r"\b(left|right) (?!of )", caption), caption
            words.update(caption.split())
    assert longest <= MAX_CAPTION_WORDS
    assert words <= vocabulary, words - vocabulary
    assert words >= set(COLORS) | set(SHAPES) | set(SIZES) | set(RELATION_WORDS) | {"of"}


def test_articles_become_an_before_a_vowel():
    assert shapes._articles("a orange bar left of a red circle") == (
        "an orange bar left of a red circle"
    )
    assert shapes._articles("a large orange bar") == "a large orange bar"


def test_reference_sets_are_unique_within_test_and_novel(data):
    for split in ("test", "novel"):
        sets = [frozenset(r.captions) for r in data[split].records]
        assert len(sets) == 500
        assert len(set(sets)) == len(sets), split


def test_train_reference_sets_do_repeat_so_uniqueness_is_enforced_not_luck():
    # Uniqueness is enforced where it matters, not an accident of a huge caption space.
    sets = [frozenset(r.captions) for r in shapes.make_split("train", 2000, seed=0).records]
    assert len(set(sets)) < len(sets)


def test_too_many_unique_images_raises_instead_of_looping(monkeypatch):
    monkeypatch.setattr(shapes, "describe", lambda scene, rng, num_references=5: ("a", "b"))
    monkeypatch.setattr(shapes, "_MAX_ATTEMPTS", 20)
    with pytest.raises(MrnnError, match="distinct reference sets"):
        shapes.make_split("test", 2, seed=0)
    with pytest.raises(MrnnError, match="distinct reference sets"):
        shapes.make_split("novel", 2, seed=0)
    assert len(shapes.make_split("train", 3, seed=0).records) == 3


def test_relations_come_from_the_dominant_axis():
    big = ShapeObject("red", "circle", "large", x=40.0, y=32.0)
    left = ShapeObject("blue", "square", "small", x=10.0, y=26.0)
    captions = shapes.describe(Scene((big, left)), np.random.default_rng(0), 6)
    assert set(captions) == {
        "a large red circle right of a small blue square",
        "a small blue square left of a large red circle",
        "the large red circle right of the small blue square",
        "the large red circle is right of the small blue square",
        "the small blue square is left of the large red circle",
        "a large red circle with a small blue square left of it",
    }
    up = ShapeObject("cyan", "bar", "medium", x=36.0, y=8.0)
    down = ShapeObject("pink", "cross", "small", x=30.0, y=58.0)
    captions = shapes.describe(Scene((big, up, down)), np.random.default_rng(0), 6)
    assert set(captions) == {
        "a large red circle below a medium cyan bar and above a small pink cross",
        "the large red circle below the medium cyan bar and above the small pink cross",
        "a medium cyan bar above and a small pink cross below a large red circle",
        "a small pink cross below and a medium cyan bar above a large red circle",
        "a medium cyan bar above a large red circle and a small pink cross below it",
        "a large red circle with a medium cyan bar above it and a small pink cross below it",
    }


def test_describe_is_seeded_and_picks_among_templates():
    scene = Scene((ShapeObject("orange", "cross", "medium", 30.0, 30.0),))
    a = shapes.describe(scene, np.random.default_rng(1))
    assert a == shapes.describe(scene, np.random.default_rng(1))
    draws = {shapes.describe(scene, np.random.default_rng(s)) for s in range(20)}
    assert len(draws) > 5
    assert all("medium orange cross" in c for c in a)
    assert len(shapes.describe(scene, np.random.default_rng(0), 2)) == 2
    every = shapes.describe(scene, np.random.default_rng(0), len(_applicable(1)))
    assert set(every) == set(_expected_captions(scene))


# --- records and pixels --------------------------------------------------------------------


def test_records_are_well_formed_and_tokens_match_tokenize(data):
    for name, split in data.items():
        assert len(split.records) == len(split.scenes) == split.images.shape[0]
        for index, record in enumerate(split.records):
            assert record.image_id == f"shapes-{name}-{index:06d}"
            assert record.split == name
            assert record.file_path is None
            assert record.tokens == tuple(tuple(tokenize(c)) for c in record.captions)
            assert record.tokens == tuple(tuple(c.split()) for c in record.captions)


def _nearest_colour(pixel: np.ndarray) -> str:
    names = list(COLORS)
    distances = [np.linalg.norm(pixel.astype(float) - np.array(COLORS[n])) for n in names]
    return names[int(np.argmin(distances))]


def test_each_object_colour_appears_at_its_centre_pixel(data):
    for split in data.values():
        for image, scene in zip(split.images[:100], split.scenes[:100], strict=True):
            for obj in scene.objects:
                pixel = image[int(obj.y), int(obj.x)]
                assert _nearest_colour(pixel) == obj.colour, (obj, pixel)
                assert np.abs(pixel.astype(int) - COLORS[obj.colour]).max() <= 30


def _red_mask(shape: str, size: str, rng: np.random.Generator) -> np.ndarray:
    """Where a lone red ``shape`` centred in a 64-pixel image is drawn, cropped to it."""
    scene = Scene((ShapeObject("red", shape, size, 32.0, 32.0),))
    image = shapes.render(scene, 64, rng)
    mask = np.all(np.abs(image.astype(int) - COLORS["red"]) <= 30, axis=-1)
    assert mask[32, 32]  # the centre is inside every shape
    rows, cols = np.nonzero(mask)
    return mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


# Drawn extent of each shape as a fraction of its bounding box side: (height, width).
EXTENTS = {"square": (0.85, 0.85), "bar": (0.5, 1.0)}


def test_sizes_render_in_increasing_extents():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        boxes = [_red_mask(shape, size, rng) for size in SIZES]
        areas = [int(box.sum()) for box in boxes]
        assert areas[0] < areas[1] < areas[2], (shape, areas)
        for axis in (0, 1):
            extents = [box.shape[axis] for box in boxes]
            assert extents[0] < extents[1] < extents[2], (shape, axis, extents)
            factor = EXTENTS.get(shape, (1.0, 1.0))[axis]
            expected = [round(SIZES[size] * 64 * factor) for size in SIZES]
            assert all(abs(h - e) <= 2 for h, e in zip(extents, expected, strict=True)), shape


def test_each_shape_word_matches_its_drawing():
    rng = np.random.default_rng(0)
    box = {shape: _red_mask(shape, "large", rng) for shape in SHAPES}
    fill = {shape: float(b.mean()) for shape, b in box.items()}

    def row_fill(shape: str, fraction: float) -> float:
        b = box[shape]
        return float(b[int(fraction * (b.shape[0] - 1))].mean())

    assert 0.7 < fill["circle"] < 0.87 and not box["circle"][0, 0]
    assert fill["square"] > 0.97
    assert abs(box["square"].shape[0] - box["square"].shape[1]) <= 1
    # Triangle: apex up, so its top rows are narrow and its bottom row is full.
    assert 0.4 < fill["triangle"] < 0.62
    assert row_fill("triangle", 0.2) < 0.35 and row_fill("triangle", 1.0) > 0.9
    # Diamond: symmetric top to bottom, half as wide at a quarter height.
    assert 0.4 < fill["diamond"] < 0.62 and not box["diamond"][0, 0]
    assert abs(row_fill("diamond", 0.1) - row_fill("diamond", 0.9)) < 0.1
    assert 0.4 < row_fill("diamond", 0.25) < 0.65
    # Cross: full middle row and column, thin arms elsewhere.
    assert 0.35 < fill["cross"] < 0.62 and not box["cross"][0, 0]
    assert row_fill("cross", 0.5) > 0.9
    arms = [row_fill("cross", f) for f in (0.05, 0.3, 0.7, 0.95)]
    assert all(0.15 < a < 0.45 for a in arms) and max(arms) - min(arms) < 0.1, arms
    # Bar: a full rectangle twice as wide as it is tall.
    assert fill["bar"] > 0.97
    assert 1.8 < box["bar"].shape[1] / box["bar"].shape[0] < 2.2


def test_shapes_stay_distinct_at_the_small_size():
    # At 0.2 x 64 (about 13 pixels) every shape still has its own silhouette.
    rng = np.random.default_rng(1)
    masks = {shape: _red_mask(shape, "small", rng) for shape in SHAPES}
    box = np.zeros((len(SHAPES), 16, 16), dtype=bool)
    for k, mask in enumerate(masks.values()):
        top, left = (16 - mask.shape[0]) // 2, (16 - mask.shape[1]) // 2
        box[k, top : top + mask.shape[0], left : left + mask.shape[1]] = mask
    for i, j in itertools.combinations(range(len(SHAPES)), 2):
        differ = int(np.sum(box[i] != box[j]))
        assert differ >= 20, (SHAPES[i], SHAPES[j], differ)
    bar = masks["bar"]
    assert bar.shape[1] >= 12 and 5 <= bar.shape[0] <= 8, bar.shape


def test_background_is_grey_varied_and_noisy(data):
    images = data["val"].images.astype(float)
    corners = np.concatenate(
        [images[:, :2, :2], images[:, :2, -2:], images[:, -2:, :2], images[:, -2:, -2:]], axis=1
    ).reshape(len(images), -1, 3)
    backgrounds = np.median(corners, axis=1)  # corners are background in most images
    greyish = np.ptp(backgrounds, axis=1) <= 20
    assert greyish.mean() > 0.8
    assert np.std(backgrounds[greyish, 0]) > 20  # light and dark backgrounds
    residual = images[0] - np.median(images[0], axis=(0, 1))
    assert 1.0 < np.median(np.abs(residual)) < 10.0  # mild pixel noise


def test_render_is_deterministic_given_the_generator():
    scene = Scene((ShapeObject("purple", "diamond", "large", 20.0, 20.0),))
    a = shapes.render(scene, 64, np.random.default_rng(5))
    b = shapes.render(scene, 64, np.random.default_rng(5))
    c = shapes.render(scene, 64, np.random.default_rng(6))
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_other_image_sizes_scale_the_objects():
    split = shapes.make_split("val", 20, seed=0, image_size=96)
    assert split.images.shape == (20, 96, 96, 3)
    for image, scene in zip(split.images, split.scenes, strict=True):
        largest = scene.objects[0]
        assert SIZES[largest.size] * 96 / 2 <= largest.x <= 96 - SIZES[largest.size] * 96 / 2
        assert _nearest_colour(image[int(largest.y), int(largest.x)]) == largest.colour


# --- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: shapes.make_split("training", 5, seed=0),
        lambda: shapes.make_split("test", -1, seed=0),
        lambda: shapes.make_split("test", 5, seed=-1),
        lambda: shapes.make_split("test", 5, seed=0, image_size=16),
        lambda: shapes.load_shapes({"train": 5, "dev": 5}),
        lambda: shapes.load_shapes({"train": 5}, image_size=31),
        lambda: shapes.describe(
            Scene((ShapeObject("red", "circle", "large", 30.0, 30.0),)),
            np.random.default_rng(0),
            num_references=9,
        ),
        lambda: Scene(()),
        lambda: Scene(
            (
                ShapeObject("red", "circle", "small", 10.0, 10.0),
                ShapeObject("blue", "square", "large", 40.0, 40.0),
            )
        ),
        lambda: Scene((ShapeObject("white", "circle", "large", 30.0, 30.0),)),
    ],
)
def test_bad_arguments_raise_mrnn_error(call):
    with pytest.raises(MrnnError):
        call()


def test_unknown_split_message_names_the_choices():
    with pytest.raises(MrnnError, match="unknown shapes split 'dev'.*train, val, test, novel"):
        shapes.load_shapes({"dev": 5})
