"""Rendering: every supported compression decodes, the grey-scale pipeline behaves."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import pytest
from PIL import Image

from careplane.imaging.render import RenderError, Window, decoded_frame, render_frame
from tests.imaging.conftest import PYDICOM_DATA, make_instance


def _opener(name: str) -> Callable[[], BinaryIO]:
    return lambda: (PYDICOM_DATA / name).open("rb")


@pytest.mark.parametrize(("name", "mode", "frame"), [
    ("MR2_UNCR.dcm", "L", 0),                      # uncompressed
    ("emri_small_RLE.dcm", "L", 3),                # RLE lossless, multi-frame
    ("JPEG-LL.dcm", "L", 0),                       # JPEG lossless (process 14)
    ("MR2_J2KR.dcm", "L", 0),                      # JPEG 2000 lossless
    ("color3d_jpeg_baseline.dcm", "RGB", 5),       # JPEG baseline, YBR, frame 6 of 120
    ("OBXXXX1A_rle_2frame.dcm", "RGB", 1),         # palette colour, RLE
    ("SC_rgb_2frame.dcm", "RGB", 1),               # RGB, uncompressed
])
def test_decodes_and_renders(name: str, mode: str, frame: int) -> None:
    data = render_frame(f"test:{name}", _opener(name), frame, media_type="image/png")
    image = Image.open(io.BytesIO(data))
    assert image.mode == mode and image.format == "PNG"
    assert np.asarray(image).std() > 1  # an image, not a flat field


def test_lossless_and_uncompressed_decode_to_the_same_pixels() -> None:
    _, raw = decoded_frame("t:MR2_UNCR", _opener("MR2_UNCR.dcm"), 0)
    _, j2k = decoded_frame("t:MR2_J2KR", _opener("MR2_J2KR.dcm"), 0)
    assert np.array_equal(raw, j2k)


def test_window_and_monochrome1() -> None:
    path = PYDICOM_DATA / "RG1_UNCR.dcm"  # MONOCHROME1: high values are dark
    opener = path.open
    wide = np.asarray(Image.open(io.BytesIO(render_frame(
        "t:RG1", lambda: opener("rb"), 0, media_type="image/png", viewport=(256, 256)))))
    low = np.asarray(Image.open(io.BytesIO(render_frame(
        "t:RG1", lambda: opener("rb"), 0, media_type="image/png", viewport=(256, 256),
        window=Window(0, 2)))))
    assert max(wide.shape) <= 256
    assert (low == 0).mean() > 0.9  # everything above a window at 0 is white, inverted: black
    assert wide.std() > low.std()


def test_viewport_jpeg_and_bad_frames() -> None:
    raw = make_instance(rows=64, columns=48, frames=3)
    jpeg = render_frame("t:made", lambda: io.BytesIO(raw), 2, viewport=(24, 24))
    assert Image.open(io.BytesIO(jpeg)).size == (18, 24)
    with pytest.raises(RenderError, match="does not exist"):
        render_frame("t:made", lambda: io.BytesIO(raw), 3)
