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
from mrnn_jax.vocab import tokenize

# The closed vocabulary the captions may use, written out so that a new word fails a test.
FUNCTION_WORDS = {
    "a", "an", "the", "of", "is", "in", "on", "with", "and", "it", "to", "than",
    "there", "picture", "image", "single", "grey", "background", "only", "one", "two",
    "three", "shape", "shapes", "nothing", "else", "biggest", "bigger",
    "left", "right", "above", "below",
}  # fmt: skip
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
MAX_CAPTION_WORDS = 15  # the shapes config decodes at most 16 words


@pytest.fixture(scope="module")
def data() -> dict[str, shapes.ShapesSplit]:
    return shapes.load_shapes({"train": 300, "val": 100, "test": 500, "novel": 500}, seed=0)


def _relation(subject: ShapeObject, reference: ShapeObject) -> str:
    dx, dy = subject.x - reference.x, subject.y - reference.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _normalise_articles(text: str) -> str:
    return re.sub(r"\ban (?=[aeiou])", "a ", text)


def _template_regexes() -> list[re.Pattern[str]]:
    colour = "|".join(COLORS)
    shape = "|".join(SHAPES)
    size = "|".join(SIZES)
    relation = "|".join(RELATIONS)
    phrase = f"(?:{colour}) (?:{shape})"
    field_patterns = {
        "L": phrase,
        "Ls": f"(?:{size}) {phrase}",
        "Lsize": f"(?:{size})",
        "O1": phrase,
        "O1s": f"(?:{size}) {phrase}",
        "O2": phrase,
        "O2s": f"(?:{size}) {phrase}",
        "R1": f"(?:{relation})",
        "R1inv": f"(?:{relation})",
        "R2inv": f"(?:{relation})",
        "N": "two|three",
        "others": f"a {phrase}(?: and a {phrase})?",
    }
    regexes = []
    for text, _ in TEMPLATES:
        parts = re.split(r"\{(\w+)\}", _normalise_articles(text))
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>{field_patterns[part]})"
            for i, part in enumerate(parts)
        )
        regexes.append(re.compile(pattern))
    return regexes


def _expected_fields(scene: Scene) -> dict[str, str]:
    largest, others = scene.objects[0], scene.objects[1:]
    fields = {
        "L": f"{largest.colour} {largest.shape}",
        "Ls": f"{largest.size} {largest.colour} {largest.shape}",
        "Lsize": largest.size,
        "N": COUNT_WORDS[len(scene.objects)],
        "others": " and ".join(f"a {o.colour} {o.shape}" for o in others),
    }
    for k, obj in enumerate(others, start=1):
        fields[f"O{k}"] = f"{obj.colour} {obj.shape}"
        fields[f"O{k}s"] = f"{obj.size} {obj.colour} {obj.shape}"
        fields[f"R{k}"] = _relation(largest, obj)
        fields[f"R{k}inv"] = _relation(obj, largest)
    return fields


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
    assert len(COLORS) >= 6
    assert len(SHAPES) >= 5
    assert list(SIZES) == ["small", "medium", "large"]
    assert SIZES["small"] < SIZES["medium"] < SIZES["large"]
    assert {"to the left of", "to the right of", "above", "below"} <= set(RELATIONS)
    assert len(TEMPLATES) >= 10
    assert SPLITS == ("train", "val", "test", "novel")
    images = data["train"].images
    assert images.dtype == np.uint8
    assert images.shape == (300, 64, 64, 3)
    counts = [len(scene.objects) for scene in data["train"].scenes[:200]]
    assert set(counts) == {1, 2, 3}
    assert min(counts.count(n) for n in (1, 2, 3)) >= 30  # all three are common


def test_colours_are_well_separated_from_each_other_and_from_grey():
    rgb = {name: np.array(value, dtype=float) for name, value in COLORS.items()}
    for a, b in itertools.combinations(rgb, 2):
        assert np.linalg.norm(rgb[a] - rgb[b]) >= 80, (a, b)
    for name, value in rgb.items():
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
        assert sum(c == colour for c, _ in seen) >= 2, colour
    for shape in SHAPES:
        assert sum(s == shape for _, s in seen) >= 2, shape


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


def test_five_references_from_five_different_matching_templates(data):
    regexes = _template_regexes()
    used = set()
    for record, scene in _all_records(data):
        assert len(record.captions) == 5
        assert len(set(record.captions)) == 5
        expected = _expected_fields(scene)
        templates = []
        for caption in record.captions:
            matches = [
                i for i, rx in enumerate(regexes) if rx.fullmatch(_normalise_articles(caption))
            ]
            assert len(matches) == 1, (caption, matches)
            index = matches[0]
            assert len(scene.objects) in TEMPLATES[index][1]
            # The words in every slot describe this scene (colours, sizes, relations, count).
            found = regexes[index].fullmatch(_normalise_articles(caption)).groupdict()
            assert found == {k: expected[k] for k in found}, (caption, scene)
            templates.append(index)
        assert len(set(templates)) == 5
        used.update(templates)
    assert used == set(range(len(TEMPLATES)))


def test_captions_use_a_small_closed_vocabulary_and_proper_articles(data):
    vocabulary = FUNCTION_WORDS | set(COLORS) | set(SHAPES) | set(SIZES)
    assert len(vocabulary) < 80
    words = set()
    for record, _ in _all_records(data):
        for caption in record.captions:
            assert caption == caption.lower().strip()
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", caption), caption
            assert len(caption.split()) <= MAX_CAPTION_WORDS, caption
            assert not re.search(r"\ba [aeiou]", caption), caption
            assert not re.search(r"\ban [^aeiou]", caption), caption
            words.update(caption.split())
    assert words <= vocabulary, words - vocabulary
    assert words >= set(COLORS) | set(SHAPES) | set(SIZES) | {"left", "right", "above", "below"}


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
    captions = shapes.describe(Scene((big, left)), np.random.default_rng(0), 11)
    assert "a large red circle to the right of a small blue square" in captions
    assert "a blue square to the left of a red circle" in captions
    assert "a red circle with a blue square to the left of it" in captions
    up = ShapeObject("blue", "square", "medium", x=36.0, y=8.0)
    down = ShapeObject("green", "cross", "small", x=30.0, y=58.0)
    captions = shapes.describe(Scene((big, up, down)), np.random.default_rng(0), 13)
    assert "a large red circle below a medium blue square" in captions
    assert "the small green cross is below the red circle" in captions
    assert "three shapes and the biggest is a red circle" in captions


def test_describe_is_seeded_and_picks_among_templates():
    scene = Scene((ShapeObject("orange", "cross", "medium", 30.0, 30.0),))
    a = shapes.describe(scene, np.random.default_rng(1))
    assert a == shapes.describe(scene, np.random.default_rng(1))
    draws = {shapes.describe(scene, np.random.default_rng(s)) for s in range(20)}
    assert len(draws) > 5
    assert all("orange cross" in c for c in a)
    assert len(shapes.describe(scene, np.random.default_rng(0), 2)) == 2


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


def test_sizes_render_in_increasing_extents():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        boxes = [_red_mask(shape, size, rng) for size in SIZES]
        areas = [int(box.sum()) for box in boxes]
        heights = [box.shape[0] for box in boxes]
        assert areas[0] < areas[1] < areas[2], (shape, areas)
        assert heights[0] < heights[1] < heights[2], (shape, heights)
        expected = [round(SIZES[size] * 64 * (0.85 if shape == "square" else 1)) for size in SIZES]
        assert all(abs(h - e) <= 2 for h, e in zip(heights, expected, strict=True)), shape


def test_each_shape_word_matches_its_drawing():
    rng = np.random.default_rng(0)
    box = {shape: _red_mask(shape, "large", rng) for shape in SHAPES}
    fill = {shape: float(b.mean()) for shape, b in box.items()}

    def row_fill(shape: str, fraction: float) -> float:
        b = box[shape]
        return float(b[int(fraction * (b.shape[0] - 1))].mean())

    assert 0.7 < fill["circle"] < 0.87 and not box["circle"][0, 0]
    assert fill["square"] > 0.97
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
        lambda: Scene((ShapeObject("pink", "circle", "large", 30.0, 30.0),)),
    ],
)
def test_bad_arguments_raise_mrnn_error(call):
    with pytest.raises(MrnnError):
        call()


def test_unknown_split_message_names_the_choices():
    with pytest.raises(MrnnError, match="unknown shapes split 'dev'.*train, val, test, novel"):
        shapes.load_shapes({"dev": 5})
