"""What the service draws (app/render.py): PNGs of pixel means, grids and heat maps."""

from __future__ import annotations

import io

import numpy as np
from app_support import read_mnist
from PIL import Image

from app.render import diverging, encode_png, grid, heat, map_png


def test_one_image_encodes_to_a_png_of_itself() -> None:
    digit = read_mnist(1)[0]
    pixels = digit.astype(np.float32) / 255.0
    back = np.asarray(Image.open(io.BytesIO(encode_png(pixels[None, None]))))
    np.testing.assert_array_equal(back, digit)


def test_several_images_encode_to_a_grid() -> None:
    images = np.ones((5, 1, 28, 28), np.float32)
    tile = grid(images, padding=2)
    assert tile.shape == (1, 2 * 28 + 3 * 2, 3 * 28 + 4 * 2)  # 3 columns, 2 rows
    assert tile.sum() == 5 * 28 * 28  # every image once, padding black
    png = Image.open(io.BytesIO(encode_png(np.ones((5, 3, 28, 28), np.float32))))
    assert png.mode == "RGB" and png.size == (92, 62)


def test_the_heat_map_has_the_documented_size_and_colours() -> None:
    x = np.zeros((2, 1, 4, 5), np.float32)
    nats = np.zeros((2, 4, 5))
    nats[0, 0, 0], nats[0, 0, 1], nats[1, 3, 4] = 5.0, 2.5, 100.0
    png = map_png(x, x, heat(nats), zoom=3)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (2 * 4 * 3, 3 * 5 * 3, 3)
    panel = image[::3, ::3][:, 10:]  # (8, 5, 3): the third panel, one pixel per value
    assert panel[0, 0].tolist() == [255, 255, 255]  # 5 nats and above: white
    assert panel[0, 1].tolist() == [255, 128, 0]  # 2.5 nats: t = 0.5, orange
    assert panel[7, 4].tolist() == [255, 255, 255]
    assert panel[1, 1].tolist() == [0, 0, 0]  # 0 nats: black


def test_the_deviation_scale_is_the_hot_ramp_above_zero_and_its_blue_mirror_below() -> None:
    deviation = np.array([[[4.0, 2.0, 0.0, -2.0, -4.0, -9.0]]])
    rgb = np.rint(diverging(deviation)[0, :, 0].T * 255).astype(int).tolist()
    assert rgb == [
        [255, 255, 255],  # +4 sd and above: white
        [255, 128, 0],  # +2: orange
        [0, 0, 0],  # as the model expects: black
        [0, 128, 255],  # -2: azure, more predictable than the model's own samples
        [255, 255, 255],
        [255, 255, 255],
    ]
