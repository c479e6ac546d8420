"""Tests for image loading: odd modes, EXIF orientation, broken files, resizing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrnn_jax.errors import MrnnError
from mrnn_jax.images import ImageError, load_image, load_images, to_rgb

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _mean_color(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, 3).mean(axis=0)


def _assert_uint8_rgb(array: np.ndarray, size: int) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (size, size, 3)


# ------------------------------------------------------------------------------ modes


def test_rgb_jpeg(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (40, 30), (200, 100, 50)), tmp_path / "a.jpg", quality=95)
    out = load_image(path, 16)
    _assert_uint8_rgb(out, 16)
    np.testing.assert_allclose(_mean_color(out), (200, 100, 50), atol=4)


def test_greyscale_l(tmp_path: Path) -> None:
    path = _save(Image.new("L", (20, 20), 77), tmp_path / "grey.png")
    out = load_image(path, 8)
    _assert_uint8_rgb(out, 8)
    assert (out == 77).all()


def test_one_bit(tmp_path: Path) -> None:
    img = Image.new("1", (20, 20), 0)
    img.paste(1, (0, 0, 20, 10))  # top half white
    path = _save(img, tmp_path / "bits.png")
    out = load_image(path, 20, resize="squash")
    _assert_uint8_rgb(out, 20)
    assert (out[:8] == 255).all()
    assert (out[12:] == 0).all()


def test_palette(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    path = _save(img, tmp_path / "pal.png")
    assert Image.open(path).mode == "P"
    out = load_image(path, 4)
    assert (out == (10, 200, 30)).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.paste(0, (0, 0, 10, 5))  # top half uses index 0, which is transparent
    path = _save(img, tmp_path / "palt.png", transparency=0)
    reopened = Image.open(path)
    assert reopened.mode == "P" and "transparency" in reopened.info
    out = load_image(path, 10, resize="squash")
    # transparent black pixels come out white, not black
    assert (out[:4] == 255).all()
    assert (out[6:] == (10, 200, 30)).all()


def test_palette_gif_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))  # right half blue, left half index 0 (transparent)
    path = _save(img, tmp_path / "t.gif", transparency=0)
    out = load_image(path, 10, resize="squash")
    assert (out[:, :4] == 255).all()
    assert (out[:, 6:] == BLUE).all()


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((10, 10, 4), dtype=np.uint8)
    arr[:, :5] = (0, 0, 0, 0)  # fully transparent black
    arr[:, 5:] = (255, 0, 0, 255)  # opaque red
    path = _save(Image.fromarray(arr, "RGBA"), tmp_path / "rgba.png")
    out = load_image(path, 10, resize="squash")
    assert (out[:, :4] == 255).all()
    assert (out[:, 6:] == RED).all()


def test_rgba_half_transparent(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[...] = (0, 0, 0, 128)  # half-transparent black over white -> mid grey
    path = _save(Image.fromarray(arr, "RGBA"), tmp_path / "half.png")
    out = load_image(path, 4)
    assert np.abs(out.astype(int) - 127).max() <= 1


def test_la(tmp_path: Path) -> None:
    arr = np.zeros((10, 10, 2), dtype=np.uint8)
    arr[:5] = (0, 0)  # transparent
    arr[5:] = (40, 255)  # opaque dark grey
    path = _save(Image.fromarray(arr, "LA"), tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    out = load_image(path, 10, resize="squash")
    assert (out[:4] == 255).all()
    assert (out[6:] == 40).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    path = _save(img, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path, 8)
    r, g, b = _mean_color(out)
    assert r > 200 and g < 50 and b < 50


def test_sixteen_bit_grey_png(tmp_path: Path) -> None:
    arr = np.array([[65535, 32896], [0, 257 * 10]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    # A 2x2 image squashed to 2x2 is an identity resize, so pixel values are exact.
    out = load_image(path, 2, resize="squash")
    np.testing.assert_array_equal(out[..., 0], [[255, 128], [0, 10]])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_to_rgb_sixteen_bit_modes(mode: str) -> None:
    arr = np.array([[65535, 32896, 0, 514]], dtype=">u2" if mode == "I;16B" else "<u2")
    img = Image.frombytes(mode, (4, 1), arr.tobytes())
    assert img.mode == mode
    out = np.asarray(to_rgb(img))
    np.testing.assert_array_equal(out[0, :, 0], [255, 128, 0, 2])


def test_to_rgb_mode_i_sixteen_bit_range() -> None:
    img = Image.fromarray(np.array([[65535, 32896, 0]], dtype=np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[0, :, 1], [255, 128, 0])


def test_to_rgb_float() -> None:
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert img.mode == "F"
    np.testing.assert_array_equal(np.asarray(to_rgb(img))[0, :, 2], [0, 128, 255])


def test_to_rgb_rgb_unchanged() -> None:
    img = Image.new("RGB", (3, 3), (1, 2, 3))
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert np.asarray(out)[0, 0].tolist() == [1, 2, 3]


def test_to_rgb_ycbcr() -> None:
    img = Image.new("RGB", (4, 4), RED).convert("YCbCr")
    out = np.asarray(to_rgb(img))
    assert out[0, 0, 0] > 240 and out[0, 0, 1] < 15 and out[0, 0, 2] < 15


# ------------------------------------------------------------------------------- EXIF


def _left_red_right_blue(width: int = 64, height: int = 32) -> Image.Image:
    img = Image.new("RGB", (width, height), RED)
    img.paste(BLUE, (width // 2, 0, width, height))
    return img


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation(tmp_path: Path, orientation: int, top, bottom) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"exif{orientation}.jpg"
    _left_red_right_blue().save(path, exif=exif, quality=95)
    out = load_image(path, 32, resize="squash")
    # 6 = rotate 90 degrees clockwise to display: the left (red) half ends up on top;
    # 8 = rotate counter-clockwise: the left half ends up at the bottom.
    np.testing.assert_allclose(_mean_color(out[:12]), top, atol=25)
    np.testing.assert_allclose(_mean_color(out[-12:]), bottom, atol=25)


def test_exif_orientation_applied_before_center_crop(tmp_path: Path) -> None:
    # Stored 300x100, top half green, bottom half red. Orientation 6 (rotate clockwise)
    # makes it a 100x300 portrait whose right half is green; the centre crop of that
    # is split left/right. Without the rotation the crop would be split top/bottom.
    img = Image.new("RGB", (300, 100), RED)
    img.paste(GREEN, (0, 0, 300, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path, 20)
    np.testing.assert_allclose(_mean_color(out[:, :6]), RED, atol=25)
    np.testing.assert_allclose(_mean_color(out[:, -6:]), GREEN, atol=25)


def test_no_exif_left_as_is(tmp_path: Path) -> None:
    path = _save(_left_red_right_blue(), tmp_path / "plain.png")
    out = load_image(path, 32, resize="squash")
    np.testing.assert_array_equal(out[:, 0], np.tile(RED, (32, 1)))
    np.testing.assert_array_equal(out[:, -1], np.tile(BLUE, (32, 1)))


# ----------------------------------------------------------------------- broken files


def test_png_with_jpg_extension(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (10, 10), GREEN), tmp_path / "really_png.jpg", format="PNG")
    out = load_image(path, 5)
    assert (out == GREEN).all()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(path, 8)
    assert str(info.value).startswith(str(path))


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty file \(0 bytes\)") as info:
        load_image(path, 8)
    assert str(path) in str(info.value)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not a readable image") as info:
        load_image(path, 8)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory") as info:
        load_image(tmp_path, 8)
    assert str(tmp_path) in str(info.value)


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    _noise(128, 96).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt") as info:
        load_image(path, 16)
    assert str(path) in str(info.value)
    # the global PIL switch stays off
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_error_is_mrnn_error() -> None:
    assert issubclass(ImageError, MrnnError)


# ------------------------------------------------------------------------ sizes/resize


def test_tiny_image(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (1, 1), (9, 99, 199)), tmp_path / "dot.png")
    for resize in ("center_crop", "squash"):
        out = load_image(path, 7, resize=resize)
        _assert_uint8_rgb(out, 7)
        assert (out == (9, 99, 199)).all()


def test_large_image(tmp_path: Path) -> None:
    img = Image.new("RGB", (3000, 2000), RED)
    img.paste(BLUE, (1500, 0, 3000, 2000))
    path = _save(img, tmp_path / "big.jpg", quality=90)
    out = load_image(path, 32)
    _assert_uint8_rgb(out, 32)
    np.testing.assert_allclose(_mean_color(out[:, :12]), RED, atol=10)
    np.testing.assert_allclose(_mean_color(out[:, -12:]), BLUE, atol=10)


def test_center_crop_keeps_centre(tmp_path: Path) -> None:
    img = Image.new("RGB", (200, 100), RED)
    img.paste(GREEN, (50, 0, 150, 100))  # the central 100x100 square is green
    path = _save(img, tmp_path / "wide.png")
    out = load_image(path, 32)
    _assert_uint8_rgb(out, 32)
    r, g, b = _mean_color(out)
    assert g > 240 and r < 15
    # squash keeps the red sides
    squashed = load_image(path, 32, resize="squash")
    assert (squashed[:, 0] == RED).all()
    assert (squashed[:, 16] == GREEN).all()


def test_center_crop_tall_image(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 180), BLUE)
    img.paste(GREEN, (0, 60, 60, 120))
    path = _save(img, tmp_path / "tall.png")
    out = load_image(path, 30)
    assert (out[3:-3] == GREEN).all()


def test_squash_shape(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (123, 45), GREEN), tmp_path / "s.png")
    out = load_image(path, 17, resize="squash")
    _assert_uint8_rgb(out, 17)
    assert (out == GREEN).all()


def test_unknown_resize_mode(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    with pytest.raises(MrnnError, match="resize"):
        load_image(path, 8, resize="stretch")


@pytest.mark.parametrize("size", [0, -5, 2.5])
def test_bad_size(tmp_path: Path, size) -> None:
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    with pytest.raises(MrnnError, match="size"):
        load_image(path, size)


def test_load_images(tmp_path: Path) -> None:
    a = _save(Image.new("RGB", (20, 10), RED), tmp_path / "a.png")
    b = _save(Image.new("L", (10, 30), 200), tmp_path / "b.png")
    out = load_images([a, str(b)], 8)
    assert out.shape == (2, 8, 8, 3)
    assert out.dtype == np.uint8
    assert (out[0] == RED).all()
    assert (out[1] == 200).all()
    assert load_images([], 8).shape == (0, 8, 8, 3)


def test_load_images_propagates_errors(tmp_path: Path) -> None:
    good = _save(Image.new("RGB", (4, 4)), tmp_path / "good.png")
    with pytest.raises(ImageError, match="missing.png"):
        load_images([good, tmp_path / "missing.png"], 8)
