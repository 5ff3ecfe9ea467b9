"""common.io: read_image decodes by content to (H, W, 3) uint8 RGB and rejects bad files by name."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from common.io import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image
from tests.conftest import png_header_only

RED = (255, 0, 0)
BLUE = (0, 0, 255)
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ROTATE_90_CW = 6


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_jpeg_round_trip(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (30, 20), RED).save(path, quality=95)
    image = read_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert image[..., 0].min() > 240 and image[..., 1:].max() < 15


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.jpg"
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        read_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: file is empty"):
        read_image(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(_noise(64, 64)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: cannot decode image: .*truncated"):
        read_image(path)


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image"):
        read_image(path)


def test_png_named_jpg_decodes_by_content(tmp_path):
    pixels = _noise(5, 7)
    path = tmp_path / "actually_png.jpg"
    Image.fromarray(pixels).save(path, format="PNG")
    np.testing.assert_array_equal(read_image(path), pixels)


def test_png_with_alpha_drops_alpha_keeps_colour(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(path)
    image = read_image(path)
    assert image.shape == (3, 4, 3)
    assert (image == [10, 20, 30]).all()


def test_palette_png_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (4, 4), BLUE).convert("P").save(path, transparency=0)
    assert Image.open(path).mode == "P"
    image = read_image(path)
    assert image.shape == (4, 4, 3) and (image == BLUE).all()


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 4096, 32896, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(path)
    assert image.shape == (1, 4, 3)
    np.testing.assert_array_equal(image[0, :, 0], [0, 16, 128, 255])  # value / 257, rounded
    assert (image == image[..., :1]).all()


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), mode="L").save(path)
    image = read_image(path)
    assert image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image[..., 0], [[0, 100], [200, 255]])
    assert (image == image[..., :1]).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # no cyan, full magenta+yellow: red
    assert Image.open(path).mode == "CMYK"
    image = read_image(path)
    assert image.shape == (16, 16, 3)
    assert image[..., 0].min() > 230 and image[..., 1:].max() < 25


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:8, :8] = RED  # top-left of the stored pixels
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_90_CW
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert image.shape == (40, 20, 3)
    # Rotating 90 degrees clockwise carries the stored top-left corner to the top-right.
    assert image[:6, -6:, 0].min() > 200 and image[:6, :6, 0].max() < 50


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    np.testing.assert_array_equal(read_image(path), [[[1, 2, 3]]])


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    first, second = Image.new("RGB", (6, 6), RED), Image.new("RGB", (6, 6), BLUE)
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    image = read_image(path)
    assert image.shape == (6, 6, 3) and (image == RED).all()


@pytest.mark.parametrize(
    "side",
    [
        100_000,  # 1e10 pixels: over twice Image.MAX_IMAGE_PIXELS, Pillow raises DecompressionBombError
        10_000,  # 1e8 pixels: over Image.MAX_IMAGE_PIXELS only, Pillow merely warns; still refused
    ],
)
def test_decompression_bomb_header_is_refused(tmp_path, side):
    assert Image.MAX_IMAGE_PIXELS < side * side
    path = png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused as a possible decompression bomb"):
        read_image(path)


def test_list_images_is_recursive_sorted_and_by_extension(tmp_path):
    for name in ["b.jpg", "a.PNG", "sub/c.jpeg", "sub/deeper/d.webp", "notes.txt", "sub/labels.csv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()
    found = [path.relative_to(tmp_path).as_posix() for path in list_images(tmp_path)]
    assert found == ["a.PNG", "b.jpg", "sub/c.jpeg", "sub/deeper/d.webp"]
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
