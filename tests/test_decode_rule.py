"""One decode rule: the trainer learns the pixels the service scores.

The same tricky files, cut from scikit-image's bundled photos, go through the
trainer's folder loader (in memory and streamed) and the service's image decoder;
the trainer stores round(255·x) of the service's x, exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from app.images import PixelBudget, decode_image
from trainer import data
from trainer.distributed import Rank
from trainer.loader import Batches
from vae_contract.manifest import InputSpec

SIZE = (24, 32)  # (H, W): not the aspect ratio of any file below, so all are cropped


def _rgb() -> np.ndarray:
    return np.asarray(photos.astronaut())[100:260, 150:350]  # (160, 200, 3) uint8


def _grey() -> np.ndarray:
    return np.asarray(photos.camera())[200:296, 180:300]  # (96, 120) uint8


def tricky_files() -> dict[str, bytes]:
    """name -> file bytes: each a case where a naive decode differs from the rule."""
    rgb, grey = _rgb(), _grey()
    files: dict[str, bytes] = {}

    def save(name: str, image: Image.Image, fmt: str, **options: object) -> None:
        out = io.BytesIO()
        image.save(out, fmt, **options)
        files[name] = out.getvalue()

    # 16-bit grey: a ramp over the whole 16-bit range (8-bit readers clip it to 255).
    ramp = np.linspace(0, 65535, 96 * 120).reshape(96, 120).astype(np.uint16)
    save("ramp16.png", Image.fromarray(ramp), "PNG")
    # Grey + alpha, transparent background: composited on black, not dropped.
    alpha = np.zeros_like(grey)
    alpha[20:76, 30:90] = 255
    save("grey-alpha.png", Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")
    # A palette with a transparent index.
    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    save("palette.png", palette, "PNG", transparency=0)
    # A phone photo stored sideways, tagged with EXIF orientation 6 (turn it upright).
    sideways = Image.fromarray(np.rot90(rgb, 1).copy())
    exif = sideways.getexif()
    exif[0x0112] = 6
    save("rotated.jpg", sideways, "JPEG", exif=exif, quality=95)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    # 32-bit float TIFF in [0, 1].
    save("float.tif", Image.fromarray((grey / 255.0).astype(np.float32), "F"), "TIFF")
    # An ordinary 8-bit photo of another size and aspect ratio.
    save("large.png", Image.fromarray(rgb), "PNG")
    return files


def _service(file: bytes, channels: int) -> np.ndarray:
    spec = InputSpec(channels=channels, height=SIZE[0], width=SIZE[1])
    budget = PixelBudget(10**8)
    return decode_image(file, spec, index=0, budget=budget, scale=255.0, resize="crop")


@pytest.mark.parametrize("channels", [1, 3])
def test_the_trainer_stores_what_the_service_decodes(tmp_path: Path, channels: int) -> None:
    files = tricky_files()
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    dataset = data.load(tmp_path, channels, SIZE, center_crop=True)
    folder = dataset.train
    assert isinstance(folder, data.Folder)
    stored = data.array(folder)  # (N, C, H, W) uint8, in the listing's (sorted) order
    alone = Rank(0, 1, 0, 1, torch.device("cpu"))
    streamed = Batches(folder, len(folder), alone, seed=0, stream=True, workers=0)
    (batch,) = list(streamed.epoch(0))
    order = list(streamed.sampler)
    for row, i in enumerate(order):
        np.testing.assert_array_equal(batch[row].numpy(), stored[i])
    for i, name in enumerate(folder.files):
        want = np.rint(_service(files[name], channels) * 255)
        np.testing.assert_array_equal(stored[i], want, err_msg=name)
    # What the files hold, as the rule reads them (the cases a naive decode gets wrong):
    by_name = {name: stored[i] for i, name in enumerate(folder.files)}
    assert by_name["ramp16.png"].min() < 64 and by_name["ramp16.png"].max() > 192
    assert by_name["grey-alpha.png"][:, 0, 0].max() == 0  # the transparent corner is black
    assert by_name["palette.png"].astype(int).sum() > 0
    rotated, upright = by_name["rotated.jpg"], by_name["large.png"]
    assert np.abs(rotated.astype(int) - upright).mean() < 6  # learned upright, not sideways


def test_the_rule_reads_16_bit_and_alpha_as_the_issue_measured(tmp_path: Path) -> None:
    """A 16-bit grey ramp has mean 127.5 (not 99.5 % at 255); a grey+alpha picture with
    a transparent background is dark (not all 255)."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    clear = np.dstack([np.full((64, 64), 255, np.uint8), np.zeros((64, 64), np.uint8)])
    clear[16:32, 16:32, 1] = 255
    Image.fromarray(clear, "LA").save(tmp_path / "clear.png")
    stored = data.array(data.load(tmp_path, 1).train)
    clear_x, ramp_x = stored[0, 0], stored[1, 0]  # sorted: clear.png, ramp.png
    assert abs(ramp_x.mean() - 127.5) < 0.5
    assert (ramp_x == 255).mean() < 0.01
    assert abs(clear_x.mean() - 255 / 16) < 0.5  # one 16th of the picture is opaque white


def test_a_sideways_photo_is_listed_at_its_upright_size(tmp_path: Path) -> None:
    rgb = _rgb()  # 160 high, 200 wide upright
    sideways = Image.fromarray(np.rot90(rgb, 1).copy())  # stored 200 high, 160 wide
    exif = sideways.getexif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    dataset = data.load(tmp_path)
    assert dataset.native_sizes == {(160, 200)}
    assert dataset.train.shape == (1, 3, 160, 200)
