"""Decoding images in the wild: every odd file decodes correctly or is refused with a reason."""

import numpy as np
import pytest
from PIL import Image

from engine.data.images import BadImage, decode_resized, load_rgb, probe


def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    Image.new("L", (20, 10), 77).save(tmp_path / "g.png")
    Image.new("P", (20, 10)).save(tmp_path / "p.gif")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    for name in ("g.png", "p.gif", "c.jpg"):
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (20, 10)
    assert load_rgb(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)
    r, g, b = load_rgb(tmp_path / "c.jpg").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.full((8, 8), 32768, dtype=np.uint16)  # half of the 16-bit range
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    gray = load_rgb(tmp_path / "deep.png").getpixel((0, 0))[0]
    assert 125 <= gray <= 130  # convert('RGB') would have clipped it to 255


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "a.png")
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "t.png", transparency=0)
    assert load_rgb(tmp_path / "a.png").getpixel((3, 3)) == (255, 255, 255)
    assert load_rgb(tmp_path / "t.png").getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (10, 30)


def test_draft_mode_still_gives_the_requested_side(tmp_path):
    Image.new("RGB", (1600, 1200), (10, 20, 30)).save(tmp_path / "big.jpg", quality=80)
    tensor = decode_resized(tmp_path / "big.jpg", 64)
    assert tensor.dtype.is_floating_point is False
    assert tuple(tensor.shape) == (3, 64, 85)


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, kind, reason):
    path = tmp_path / "bad.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a JPEG")
    else:
        Image.effect_noise((64, 64), 40).convert("RGB").save(tmp_path / "full.jpg")
        data = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut short
    with pytest.raises(BadImage, match=reason):
        probe(path)
    with pytest.raises(BadImage):
        decode_resized(path, 32)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("L", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImage, match="decompression bomb"):
        probe(tmp_path / "bomb.png")
