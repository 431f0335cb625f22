"""spurcli.images: folder discovery, decoding every mode to RGB, corrupt files, PNG writing."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spurcli.errors import SpurcliError
from spurcli.images import (
    ImageReadError,
    find_images,
    make_grid,
    read_folder,
    read_image,
    sha256_file,
    to_rgb,
    write_png,
)

RED = (220, 30, 40)


def solid(mode: str = "RGB", color=RED, size=(12, 8)) -> Image.Image:
    return Image.new(mode, size, color)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def close(a, b, tol=3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- discovery ---------------------------------------------------------------------------------


def test_find_images_recursive_sorted_filtered(tmp_path):
    for rel in ["b/2.png", "b/10.jpg", "a.JPEG", "c/d/e.webp", "z.bmp", "m.PNG"]:
        save(solid(), tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "meta.json").write_text("{}")
    save(solid(), tmp_path / ".hidden.png")
    save(solid(), tmp_path / ".cache" / "x.png")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.JPEG", "b/10.jpg", "b/2.png", "c/d/e.webp", "m.PNG", "z.bmp"]
    assert find_images(str(tmp_path)) == find_images(tmp_path)  # str or Path


def test_find_images_single_file(tmp_path):
    path = save(solid(), tmp_path / "one.png")
    assert find_images(path) == [path]


def test_find_images_missing_and_empty(tmp_path):
    with pytest.raises(SpurcliError, match=r"image folder not found: .*nowhere"):
        find_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpurcliError, match=r"no images in .*empty"):
        find_images(tmp_path / "empty")
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "a.txt").write_text("x")
    save(solid(), tmp_path / "only-text" / ".hidden.png")
    with pytest.raises(SpurcliError, match="no images"):
        find_images(tmp_path / "only-text")


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "tol"), [(".png", 0), (".jpg", 6), (".webp", 6), (".bmp", 0), (".jpeg", 6)]
)
def test_formats_decode_to_rgb(tmp_path, suffix, tol):
    path = save(solid(size=(16, 16)), tmp_path / f"img{suffix}")
    img = read_image(path)
    assert (img.mode, img.size) == ("RGB", (16, 16))
    assert close(img.getpixel((8, 8)), RED, tol)


def test_palette_with_and_without_transparency(tmp_path):
    palette = solid().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    img = read_image(save(palette, tmp_path / "p.png"))
    assert img.mode == "RGB" and close(img.getpixel((0, 0)), RED, 0)

    p = Image.new("P", (4, 2))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    p.putpixel((0, 0), 1)
    img = read_image(save(p, tmp_path / "pt.png", transparency=1))  # blue is transparent
    assert img.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    assert img.getpixel((1, 0)) == (255, 0, 0)
    gif = read_image(save(p, tmp_path / "pt.gif", transparency=1))  # same via GIF
    assert gif.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("LA", (77, 0), (255, 255, 255)),  # fully transparent: white
        ("LA", (77, 255), (77, 77, 77)),
        ("RGBA", (*RED, 0), (255, 255, 255)),
        ("RGBA", (*RED, 255), RED),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half-transparent black over white
    ],
)
def test_grey_and_alpha_modes(tmp_path, mode, color, expected):
    img = read_image(save(solid(mode, color), tmp_path / f"{mode}.png"))
    assert img.mode == "RGB" and close(img.getpixel((3, 3)), expected, 1)


def test_colour_key_transparency(tmp_path):
    img = Image.new("RGB", (2, 1), RED)
    img.putpixel((1, 0), (0, 255, 0))
    out = read_image(save(img, tmp_path / "key.png", transparency=(0, 255, 0)))
    assert out.getpixel((0, 0)) == RED and out.getpixel((1, 0)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    cmyk = solid().convert("CMYK")
    path = save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    img = read_image(path)
    assert img.mode == "RGB" and close(img.getpixel((4, 4)), RED, 8)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.array([[0, 200, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(ramp), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    values = [read_image(path).getpixel((x, 0))[0] for x in range(4)]
    assert values == [0, 0, 127, 255]  # 200/65535 of full scale is black, not clipped to white
    dark = save(Image.fromarray(np.full((2, 2), 200, np.uint16)), tmp_path / "dark16.png")
    assert read_image(dark).getpixel((0, 0)) == (0, 0, 0)


def test_32_bit_integer_image_in_8_bit_range():
    img = Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32), mode="I")
    assert [to_rgb(img).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif.tobytes()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue (as stored)
    path = save(img, tmp_path / "rotated.jpg", exif=exif_with_orientation(6), quality=95)
    out = read_image(path)
    assert out.size == (20, 40)  # orientation 6: shown rotated 90 degrees clockwise
    assert close(out.getpixel((10, 5)), (255, 0, 0), 12)  # left side is now on top
    assert close(out.getpixel((10, 35)), (0, 0, 255), 12)
    plain = read_image(save(img, tmp_path / "plain.jpg", exif=exif_with_orientation(1)))
    assert plain.size == (40, 20)


# --- unreadable files --------------------------------------------------------------------------


def truncated_png(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: truncated_png(p / "cut.png"), "corrupt or unreadable"),
        (lambda p: (p / "text.jpg").write_text("hello") and p / "text.jpg", "not an image"),
        (lambda p: (p / "empty.webp").write_bytes(b"") or p / "empty.webp", "not an image"),
        (lambda p: p / "missing.png", "file not found"),
    ],
    ids=["truncated-png", "text-as-jpg", "empty-file", "missing"],
)
def test_unreadable_file_names_the_file(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message
    assert isinstance(info.value, SpurcliError)


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    save(solid(color=(0, 255, 0)), tmp_path / "a.png")
    truncated_png(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_text("not a jpeg")
    save(solid(), tmp_path / "sub" / "d.jpg")
    return tmp_path


def test_read_folder_skips_with_warning(mixed_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="spurcli"):
        images, skipped = read_folder(mixed_folder)
    assert [p.name for p, _ in images] == ["a.png", "d.jpg"]
    assert all(img.mode == "RGB" for _, img in images)
    assert len(skipped) == 2 and "b.png" in skipped[0] and "c.jpg" in skipped[1]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "b.png" in warned[0] and "c.jpg" in warned[1]


def test_read_folder_strict_raises_on_first_bad_file(mixed_folder):
    with pytest.raises(ImageReadError, match=r"b\.png"):
        read_folder(mixed_folder, strict=True)


def test_read_folder_with_nothing_readable(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(SpurcliError, match=r"no readable images in .*\(1 unreadable\)"):
        read_folder(tmp_path)


# --- writing -----------------------------------------------------------------------------------


def test_write_png_metadata_round_trip(tmp_path):
    meta = {"prompt": "a photo of sks feeder — ünïcode ✓", "seed": 7, "step": 1.5}
    path = tmp_path / "deep" / "out.png"
    write_png(path, solid(), meta)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.text == {k: str(v) for k, v in meta.items()}
    assert read_image(path).getpixel((0, 0)) == RED
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temporary left


def test_write_png_is_atomic_on_failure(tmp_path):
    path = tmp_path / "out.png"
    write_png(path, solid(color=(0, 0, 255)))
    before = path.read_bytes()
    with pytest.raises(OSError):
        write_png(path, solid("CMYK", (0, 0, 0, 0)))  # PNG cannot hold CMYK: save() fails
    assert path.read_bytes() == before  # the old file is untouched
    with pytest.raises(OSError):
        write_png(tmp_path / "new.png", solid("CMYK", (0, 0, 0, 0)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_png_metadata_values_become_text(tmp_path):
    path = tmp_path / "x.png"
    write_png(path, solid(), {"a": None, "b": [1, 2]})
    with Image.open(path) as img:
        assert img.text == {"a": "None", "b": "[1, 2]"}


def test_sha256_and_grid(tmp_path):
    path = save(solid(), tmp_path / "a.png")
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    grid = make_grid([solid(), solid(size=(5, 30)), solid()], cell=10)
    assert grid.size == (20, 20)  # 3 images: 2 columns, 2 rows, the last cell empty
    assert grid.getpixel((5, 15)) == RED and grid.getpixel((15, 15)) == (255, 255, 255)
    assert make_grid([solid()] * 5, columns=5, cell=4).size == (20, 4)
    with pytest.raises(SpurcliError, match="no images"):
        make_grid([])


def test_tensor_round_trip():
    torch = pytest.importorskip("torch")
    from spurcli.images import to_pil, to_tensor

    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    tensor = to_tensor(img)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    assert np.array_equal(np.asarray(to_pil(tensor)), np.asarray(img))
    assert to_pil(torch.full((3, 2, 2), 2.0)).getpixel((0, 0)) == (255, 255, 255)  # clamped
