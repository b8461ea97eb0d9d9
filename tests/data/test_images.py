"""Images and tables checked at load (issue 23 item 3): full decode, a pixel limit checked
before decoding, high-bit-depth images rescaled, other modes converted, BOM and encodings."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from lvlm_lens.data import load_folder
from lvlm_lens.data.images import PIXELS_ENV, to_8bit
from lvlm_lens.model.prepare import to_rgb
from lvlm_lens.run.job import load_baseline_image
from lvlm_lens.run.options import RunOptions


def _folder(tmp_path, image_name="a.png"):
    (tmp_path / "data.csv").write_text(f"image,prompt,answer\n{image_name},USER: <image> A:,cat\n")
    return tmp_path


def test_a_16_bit_png_equals_its_8_bit_rescaling(tmp_path):
    arr = (np.arange(12 * 20, dtype=np.uint32).reshape(12, 20) * 273).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    expected = np.rint(arr / 257.0).astype(np.uint8)
    (rec,) = load_folder(_folder(tmp_path))
    got = np.asarray(rec.load_image())
    assert got.shape == (12, 20, 3) and (got == expected[..., None]).all()
    assert (np.asarray(to_rgb(tmp_path / "a.png")) == expected[..., None]).all()
    assert expected.max() > 200 and expected.min() == 0  # not all white, not all black


def test_mode_i_images_are_rescaled_by_their_value_range():
    sixteen = (np.arange(6 * 7, dtype=np.int32).reshape(6, 7) * 1598).clip(0, 65535)
    got = np.asarray(to_8bit(Image.fromarray(sixteen.astype(np.int32), mode="I")))
    assert (got == np.rint(sixteen / 257.0).astype(np.uint8)).all() and got.max() == 255
    wide = np.array([[0, 2**20, 2**24], [2**28, 2**30, 2**31 - 1]], dtype=np.int32)
    got = np.asarray(to_8bit(Image.fromarray(wide, mode="I")))
    # by hand: v * 255 / (2**31 - 1) rounded -> 0, 0.12, 1.99, 31.9, 127.5, 255
    assert got.tolist() == [[0, 0, 2], [32, 128, 255]]
    signed = np.array([[-100, -50, 100]], dtype=np.int32)  # min..max: 0, 63.75, 255
    assert np.asarray(to_8bit(Image.fromarray(signed, mode="I"))).tolist() == [[0, 64, 255]]


def test_float_images_in_0_1_are_scaled_by_255():
    arr = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    got = np.asarray(to_8bit(Image.fromarray(arr, mode="F")))
    assert (got == np.rint(arr.astype(np.float64) * 255).astype(np.uint8)).all()


@pytest.mark.parametrize(
    ("mode", "colour", "rgb"),
    [("P", 3, None), ("LA", (90, 255), (90, 90, 90)), ("CMYK", (0, 0, 0, 0), (255, 255, 255))],
)
def test_palette_la_and_cmyk_images_are_converted(tmp_path, mode, colour, rgb):
    im = Image.new(mode, (16, 16), colour)
    if mode == "P":
        im.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 744)
        rgb = (70, 80, 90)
    im.save(tmp_path / ("a.tif" if mode == "CMYK" else "a.png"))
    (rec,) = load_folder(_folder(tmp_path, "a.tif" if mode == "CMYK" else "a.png"))
    assert rec.load_image().getpixel((3, 3)) == rgb


def test_a_truncated_image_is_refused_at_load_naming_the_row(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        tmp_path / "a.png"
    )
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"data\.csv row 1: .*a\.png' is not a readable image"):
        load_folder(_folder(tmp_path))


def _bomb_png(path, width, height):
    """A PNG whose header claims ``width x height`` pixels (its data is one tiny row)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)  # fmt: skip

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 9)) + chunk(b"IEND", b""))  # fmt: skip


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    _bomb_png(tmp_path / "a.png", 100_000, 100_000)

    def never(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(ValueError, match=rf"data\.csv row 1: .* is 100000x100000 = "
                       rf"10,000,000,000 pixels, above the limit of 89,478,485 .*{PIXELS_ENV}="):
        load_folder(_folder(tmp_path))
    monkeypatch.setenv(PIXELS_ENV, str(10**11))  # raised: now it is decoded (and fails here)
    with pytest.raises(AssertionError, match="decoded"):
        load_folder(_folder(tmp_path))


def test_a_utf8_bom_is_accepted(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "data.csv").write_text("image,prompt,answer\na.png,<image> q,cat\n",
                                       encoding="utf-8-sig")  # fmt: skip
    (rec,) = load_folder(tmp_path)
    assert rec.answer == "cat"


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "data.csv").write_bytes(b"image,prompt,answer\na.png,<image> q,cat\n"
                                        b"a.png,<image> q,caf\xe9\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"data\.csv line 3: byte 0xe9 is not UTF-8"):
        load_folder(tmp_path)


def test_a_baseline_image_that_is_not_an_image_is_named(tmp_path):
    (tmp_path / "base.png").write_text("not an image")
    opts = RunOptions(out=str(tmp_path / "run"), baseline_image=str(tmp_path / "base.png"))
    with pytest.raises(ValueError, match=r"--baseline-image: .*base\.png' is not a readable"):
        load_baseline_image(opts)
