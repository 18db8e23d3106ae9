"""16-bit, alpha and palette images are read as documented in ``read_image`` / ``read_mask``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medssl.data.folder import read_image, read_mask
from medssl.errors import MedsslError


def save(tmp_path, img: Image.Image, name: str = "i.png"):
    img.save(tmp_path / name)
    return tmp_path / name


def test_16bit_is_min_max_scaled_not_clipped_at_255(tmp_path):
    arr = np.array([[0, 1000], [30000, 60000]], np.uint16)
    got = read_image(save(tmp_path, Image.fromarray(arr)))
    # percentile clip 0.5-99.5 then min-max: order kept, the ends reach 0 and 255
    assert got.dtype == np.uint8 and got[0, 0] == 0 and got[1, 1] == 255
    assert 0 < got[0, 1] < got[1, 0] < 255


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0  # fully transparent: compositing on black would give 0
    path = save(tmp_path, Image.fromarray(rgba, "RGBA"))
    assert (read_image(path) == 200).all()
    assert (read_image(path, channels=3) == 200).all()


def test_palette_image_is_looked_up_then_grey(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)  # index 0 black, 1 white
    got = read_image(save(tmp_path, img))
    assert got.tolist() == [[0, 255]]


def test_palette_mask_gives_indices_and_alpha_is_ignored(tmp_path):
    img = Image.fromarray(np.array([[0, 2]], np.uint8), "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    assert read_mask(save(tmp_path, img, "p.png")).tolist() == [[0, 2]]
    la = np.dstack([np.array([[0, 1]], np.uint8), np.full((1, 2), 255, np.uint8)])
    assert read_mask(save(tmp_path, Image.fromarray(la, "LA"), "la.png")).tolist() == [[0, 1]]
    rgba = np.dstack([np.array([[0, 1]], np.uint8)] * 3 + [np.full((1, 2), 255, np.uint8)])
    assert read_mask(save(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")).tolist() == [[0, 1]]


def test_colour_mask_is_an_error_naming_the_file(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    path = save(tmp_path, Image.fromarray(rgb, "RGB"), "m.png")
    with pytest.raises(MedsslError, match=r"m\.png: mask has colour channels"):
        read_mask(path)


def test_unconvertible_mode_is_a_one_line_error(tmp_path):
    path = save(tmp_path, Image.new("LAB", (2, 2)), "lab.tif")  # Pillow cannot make LAB grey
    with pytest.raises(MedsslError, match=r"lab\.tif: image mode LAB cannot be read as grey/RGB"):
        read_image(path)


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "F", "1", "PA", "I;16B"])
def test_other_modes_read_as_uint8(tmp_path, mode):
    got = read_image(save(tmp_path, Image.new(mode, (3, 2)), "m.tif"), channels=3)
    assert got.shape == (3, 2, 3) and got.dtype == np.uint8
