"""The built-in ``shapes`` dataset: procedurally generated scenes with reference captions.

Nothing is downloaded. Each image shows one to three coloured shapes on a grey, noisy
background; each object has a different size class, so the largest one is unambiguous. Every
image comes with five reference captions, each worded by a different template. Every caption
describes every object by its size, colour and shape ("large red circle") and says where each
other object lies relative to the largest one ("left of", "right of", "above", "below"), with
few fixed words, so that most words carry information that only the image can give. Every
caption names the colour and shape of the largest object as one phrase ("red circle").

Everything is deterministic from a seed. Each split draws from its own generator, derived
from ``(seed, split)`` through a :class:`numpy.random.SeedSequence` with a fixed integer per
split, so the number of training images never changes the test images, and the first ``n``
images of a split are the same whatever the split's size.

Splits:
  ``train``, ``val``, ``test``: no object anywhere is one of :data:`HELD_OUT_PAIRS`.
  ``novel``: the largest object is always a held-out colour-shape pair (the others are
    unrestricted), to measure generalisation to unseen combinations of known words.
  In ``test`` and ``novel`` no two images share the same set of references.

Templates are ``(text, counts)`` pairs: ``text`` is a :meth:`str.format` pattern and
``counts`` the numbers of objects it applies to. The fields: ``{D0}``, ``{D1}``, ``{D2}``
describe the objects, largest first, as ``<size> <colour> <shape>``; ``{relIJ}`` says where
object ``I`` lies relative to object ``J`` (``{rel10}``, ``{rel20}``: the others relative to
the largest; ``{rel01}``, ``{rel02}``: the largest relative to the others).

Captions are lower case words separated by single spaces, without punctuation, so
``caption.split()`` equals :func:`mrnn_jax.text.vocab.tokenize` of the caption.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np

from mrnn_jax.data.records import ImageRecord
from mrnn_jax.errors import MrnnError
from mrnn_jax.text.vocab import tokenize

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 230, 40),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
    "cyan": (40, 210, 220),
    "pink": (255, 110, 190),
}
"""Colour word -> RGB; saturated, at least 80 apart from each other and from every grey the
background can take."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "bar")
"""Shape words (a bar is a horizontal rectangle twice as wide as it is tall)."""

SIZES: dict[str, float] = {"small": 0.2, "medium": 0.3, "large": 0.45}
"""Size word -> side of the object's bounding box as a fraction of the image side."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relations, from the dominant axis of the displacement between object centres."""

TEMPLATES: tuple[tuple[str, tuple[int, ...]], ...] = (
    # One object.
    ("a {D0}", (1,)),
    ("one {D0}", (1,)),
    ("the {D0}", (1,)),
    ("a single {D0}", (1,)),
    ("just a {D0}", (1,)),
    ("only a {D0}", (1,)),
    ("there is a {D0}", (1,)),
    # Two objects.
    ("a {D0} {rel01} a {D1}", (2,)),
    ("a {D1} {rel10} a {D0}", (2,)),
    ("the {D0} {rel01} the {D1}", (2,)),
    ("the {D0} is {rel01} the {D1}", (2,)),
    ("the {D1} is {rel10} the {D0}", (2,)),
    ("a {D0} with a {D1} {rel10} it", (2,)),
    # Three objects.
    ("a {D0} {rel01} a {D1} and {rel02} a {D2}", (3,)),
    ("the {D0} {rel01} the {D1} and {rel02} the {D2}", (3,)),
    ("a {D1} {rel10} and a {D2} {rel20} a {D0}", (3,)),
    ("a {D2} {rel20} and a {D1} {rel10} a {D0}", (3,)),
    ("a {D1} {rel10} a {D0} and a {D2} {rel20} it", (3,)),
    ("a {D0} with a {D1} {rel10} it and a {D2} {rel20} it", (3,)),
)
"""Caption templates as ``(format pattern, object counts it applies to)``: few fixed words,
so that most words name a size, colour, shape or relation."""

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("red", "bar"),
        ("green", "diamond"),
        ("green", "circle"),
        ("blue", "cross"),
        ("yellow", "circle"),
        ("purple", "square"),
        ("orange", "diamond"),
        ("cyan", "cross"),
        ("pink", "triangle"),
    }
)
"""(colour, shape) pairs never seen in train/val/test: 10 of the 48 pairs. Training keeps at
least 4 shapes of every colour and at least 6 colours of every shape."""

SPLITS = ("train", "val", "test", "novel")

_SPLIT_KEYS = {"train": 1, "val": 2, "test": 3, "novel": 4}  # fixed: never renumber
_UNIQUE_SPLITS = frozenset({"test", "novel"})
_MIN_IMAGE_SIZE = 32
_MAX_ATTEMPTS = 1000  # scene draws per image before giving up on a unique reference set
_SIZE_ORDER = ("large", "medium", "small")  # largest first
_GREY_RANGE = (50, 200)  # background grey level, inclusive
_NOISE_STD = 5.0
_A_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")
_ALL_PAIRS = tuple(itertools.product(COLORS, SHAPES))
_TRAIN_PAIRS = tuple(p for p in _ALL_PAIRS if p not in HELD_OUT_PAIRS)
_NOVEL_PAIRS = tuple(p for p in _ALL_PAIRS if p in HELD_OUT_PAIRS)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object: its colour, shape and size words and its centre in pixels."""

    colour: str
    shape: str
    size: str
    x: float
    y: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """The ground truth of one image: one to three objects, largest first."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 3:
            raise MrnnError(f"a shapes scene has 1 to 3 objects, not {len(self.objects)}")
        for obj in self.objects:
            if obj.colour not in COLORS or obj.shape not in SHAPES or obj.size not in SIZES:
                raise MrnnError(f"unknown colour, shape or size in {obj}")
        ranks = [_SIZE_ORDER.index(obj.size) for obj in self.objects]
        if ranks != sorted(set(ranks)):
            raise MrnnError("the objects of a shapes scene need distinct sizes, largest first")

    def largest_phrase(self) -> str:
        """Return the colour and shape of the largest object, e.g. ``"red circle"``."""
        return _phrase(self.objects[0])


@dataclasses.dataclass(frozen=True)
class ShapesSplit:
    """One split: records, pixels and ground-truth scenes, aligned by index."""

    records: list[ImageRecord]
    images: np.ndarray
    scenes: list[Scene]


def _phrase(obj: ShapeObject, with_size: bool = False) -> str:
    words = f"{obj.colour} {obj.shape}"
    return f"{obj.size} {words}" if with_size else words


def _relation(subject: ShapeObject, reference: ShapeObject) -> str:
    """Where ``subject`` lies relative to ``reference`` (image y grows downwards)."""
    dx = subject.x - reference.x
    dy = subject.y - reference.y
    if abs(dx) >= abs(dy):
        return RELATIONS[0] if dx < 0 else RELATIONS[1]
    return RELATIONS[2] if dy < 0 else RELATIONS[3]


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise MrnnError(f"shapes image_size must be an integer, got {image_size!r}")
    if image_size < _MIN_IMAGE_SIZE:
        raise MrnnError(
            f"shapes image_size must be at least {_MIN_IMAGE_SIZE} pixels, got {image_size}"
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise MrnnError(f"unknown shapes split {split!r}; choose from {', '.join(SPLITS)}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise MrnnError(f"shapes {name} must be a non-negative integer, got {value!r}")


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``scene`` and return an ``[image_size, image_size, 3]`` uint8 RGB image.

    The background is a grey level drawn from ``rng``; each object is filled with its colour
    (masks computed from pixel-centre coordinates, numpy only); then mild Gaussian noise
    from ``rng`` is added to every pixel.
    """
    _check_image_size(image_size)
    grey = float(rng.integers(_GREY_RANGE[0], _GREY_RANGE[1] + 1))
    image = np.full((image_size, image_size, 3), grey, dtype=np.float32)
    for obj in scene.objects:
        half = SIZES[obj.size] * image_size / 2.0
        top = max(int(np.floor(obj.y - half)), 0)
        bottom = min(int(np.ceil(obj.y + half)) + 1, image_size)
        left = max(int(np.floor(obj.x - half)), 0)
        right = min(int(np.ceil(obj.x + half)) + 1, image_size)
        if top >= bottom or left >= right:
            continue
        dy = (np.arange(top, bottom, dtype=np.float32) + 0.5 - obj.y)[:, None]
        dx = (np.arange(left, right, dtype=np.float32) + 0.5 - obj.x)[None, :]
        mask = _mask(obj.shape, dx, dy, half)
        image[top:bottom, left:right][mask] = COLORS[obj.colour]
    image += rng.standard_normal(image.shape, dtype=np.float32) * _NOISE_STD
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Boolean mask of ``shape`` (bounding box ``2 * half``) over broadcast offsets."""
    adx, ady = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        side = 0.85 * half
        return (adx <= side) & (ady <= side)
    if shape == "triangle":  # apex up, base at the bottom of the bounding box
        return (dy >= -half) & (dy <= half) & (adx <= (dy + half) / 2.0)
    if shape == "diamond":
        return adx + ady <= half
    if shape == "cross":
        arm = 0.3 * half
        return ((adx <= arm) & (ady <= half)) | ((ady <= arm) & (adx <= half))
    if shape == "bar":  # full width, half as tall
        return (adx <= half) & (ady <= 0.5 * half)
    raise MrnnError(f"unknown shape {shape!r}")


def describe(scene: Scene, rng: np.random.Generator, num_references: int = 5) -> tuple[str, ...]:
    """Return ``num_references`` captions of ``scene``, each from a different template.

    The templates are drawn without replacement by ``rng`` among those that apply to the
    scene's number of objects. Every caption describes every object with its size, colour
    and shape, so it contains :meth:`Scene.largest_phrase`.
    """
    applicable = [text for text, counts in TEMPLATES if len(scene.objects) in counts]
    if isinstance(num_references, bool) or not 1 <= num_references <= len(applicable):
        raise MrnnError(
            f"num_references must be between 1 and {len(applicable)} for a scene of "
            f"{len(scene.objects)} objects, got {num_references!r}"
        )
    fields = _fields(scene)
    chosen = rng.choice(len(applicable), size=num_references, replace=False)
    return tuple(_articles(applicable[int(i)].format(**fields)) for i in chosen)


def _articles(caption: str) -> str:
    """Write ``an`` instead of ``a`` before a vowel ("an orange circle")."""
    return _A_BEFORE_VOWEL.sub("an ", caption)


def _fields(scene: Scene) -> dict[str, str]:
    objects = scene.objects
    fields = {f"D{i}": _phrase(obj, with_size=True) for i, obj in enumerate(objects)}
    for i, obj in enumerate(objects[1:], start=1):
        fields[f"rel{i}0"] = _relation(obj, objects[0])
        fields[f"rel0{i}"] = _relation(objects[0], obj)
    return fields


def _sample_scene(split: str, image_size: int, rng: np.random.Generator) -> Scene:
    """Draw a random scene for ``split`` (object count, sizes, colours, shapes, places)."""
    count = int(rng.integers(1, 4))
    size_ids = np.sort(rng.choice(3, size=count, replace=False))
    sizes = [_SIZE_ORDER[int(i)] for i in size_ids]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        pool = _TRAIN_PAIRS
        if split == "novel":
            pool = _ALL_PAIRS if pairs else _NOVEL_PAIRS
        pair = pool[int(rng.integers(len(pool)))]
        if pair not in pairs:  # distinct pairs keep every phrase unambiguous
            pairs.append(pair)
    centres = _place(sizes, image_size, rng)
    return Scene(
        tuple(
            ShapeObject(colour, shape, size, x, y)
            for (colour, shape), size, (x, y) in zip(pairs, sizes, centres, strict=True)
        )
    )


def _place(
    sizes: list[str], image_size: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Rejection-sample centres: inside the image, bounding boxes apart by a gap, and the
    relation of each object to the first (largest) one clear on its dominant axis."""
    gap = max(2.0, 0.04 * image_size)
    clear = 0.08 * image_size  # min difference between |dx| and |dy| from the largest
    halves = [SIZES[s] * image_size / 2.0 for s in sizes]
    for _ in range(100):
        centres: list[tuple[float, float]] = []
        for half in halves:
            for _ in range(200):
                x, y = rng.uniform(half + 1.0, image_size - half - 1.0, size=2)
                x, y = float(x), float(y)
                if all(
                    _apart(x, y, half, cx, cy, halves[j], gap) for j, (cx, cy) in enumerate(centres)
                ):
                    if centres and abs(abs(x - centres[0][0]) - abs(y - centres[0][1])) < clear:
                        continue
                    centres.append((x, y))
                    break
            else:
                break
        if len(centres) == len(halves):
            return centres
    raise MrnnError(f"could not place {len(sizes)} shapes in a {image_size}-pixel image")


def _apart(x: float, y: float, half: float, cx: float, cy: float, chalf: float, gap: float) -> bool:
    reach = half + chalf + gap
    return abs(x - cx) >= reach or abs(y - cy) >= reach


def _split_rng(split: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_KEYS[split]]))


def make_split(split: str, num_images: int, seed: int, image_size: int = 64) -> ShapesSplit:
    """Generate one split and return it as a :class:`ShapesSplit`.

    Returns ``num_images`` records (ids ``shapes-<split>-000000`` onwards, five captions
    each, ``file_path`` ``None``), the ``[num_images, image_size, image_size, 3]`` uint8
    images and the ground-truth scenes, all aligned. Raises :class:`MrnnError` for an
    unknown split, a bad count, seed or image size, or when ``test``/``novel`` cannot hold
    that many images with distinct reference sets.
    """
    _check_split(split)
    _check_count("num_images", num_images)
    _check_count("seed", seed)
    _check_image_size(image_size)
    num_images, image_size = int(num_images), int(image_size)
    rng = _split_rng(split, seed)
    seen: set[frozenset[str]] | None = set() if split in _UNIQUE_SPLITS else None
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    records: list[ImageRecord] = []
    scenes: list[Scene] = []
    token_cache: dict[str, tuple[str, ...]] = {}  # captions repeat; tokenize is pure
    for index in range(num_images):
        for _ in range(_MAX_ATTEMPTS):
            scene = _sample_scene(split, image_size, rng)
            captions = describe(scene, rng)
            key = frozenset(captions)
            if seen is None or key not in seen:
                break
        else:
            raise MrnnError(
                f"could not make {num_images} shapes {split} images with distinct reference "
                f"sets (stuck at image {index}); ask for fewer {split} images"
            )
        if seen is not None:
            seen.add(key)
        images[index] = render(scene, image_size, rng)
        scenes.append(scene)
        records.append(
            ImageRecord(
                image_id=f"shapes-{split}-{index:06d}",
                split=split,
                captions=captions,
                tokens=tuple(_tokens(c, token_cache) for c in captions),
                file_path=None,
            )
        )
    return ShapesSplit(records=records, images=images, scenes=scenes)


def _tokens(caption: str, cache: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    tokens = cache.get(caption)
    if tokens is None:
        tokens = cache[caption] = tuple(tokenize(caption))
    return tokens


def load_shapes(
    sizes: dict[str, int], seed: int = 0, image_size: int = 64
) -> dict[str, ShapesSplit]:
    """Generate the requested splits and return ``{split: ShapesSplit}`` in ``sizes`` order.

    ``sizes`` maps split names (from :data:`SPLITS`) to numbers of images, e.g.
    ``{"train": 8000, "val": 500, "test": 500, "novel": 500}``. Raises :class:`MrnnError`
    for an unknown split name or a bad size, before generating anything.
    """
    for split, count in sizes.items():
        _check_split(split)
        _check_count(f"number of {split} images", count)
    _check_count("seed", seed)
    _check_image_size(image_size)
    return {split: make_split(split, count, seed, image_size) for split, count in sizes.items()}
