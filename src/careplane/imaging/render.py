"""Rendering frames for people: decode, apply the grey-scale pipeline, encode JPEG or PNG.

Decoding goes through pydicom's pixel handlers with the pylibjpeg plugins (uncompressed, RLE,
JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000). The grey-scale pipeline follows PS3.3
C.11: modality LUT (rescale), then the VOI transform — the window asked for in the request,
else the one the image carries (window or VOI LUT), else the full range of its values — then
MONOCHROME1 inversion. Decoded frames are cached (bounded in bytes), so scrolling and changing
the window of an image decodes it once: a JPEG 2000 chest radiograph costs about half a second
to decode and a few milliseconds to re-window.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi, pixel_array

__all__ = ["RenderError", "Window", "decoded_frame", "frame_count", "render_frame",
           "render_pixels"]

MAX_CACHE_BYTES = 768 * 1024 * 1024


class RenderError(ValueError):
    """The frame cannot be rendered (no pixel data, undecodable, bad frame number)."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


class _LRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], value: np.ndarray) -> None:
        with self.lock:
            if key in self.items or value.nbytes > self.max_bytes:
                return
            self.items[key] = value
            self.size += value.nbytes
            while self.size > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.size -= old.nbytes


_FRAMES = _LRU(MAX_CACHE_BYTES)
_HEADERS: OrderedDict[str, Dataset] = OrderedDict()
_HEADERS_LOCK = threading.Lock()


def _header(key: str, opener: Callable[[], BinaryIO]) -> Dataset:
    with _HEADERS_LOCK:
        cached = _HEADERS.get(key)
        if cached is not None:
            _HEADERS.move_to_end(key)
            return cached
    with opener() as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(fh, stop_before_pixels=True, force=True)
    with _HEADERS_LOCK:
        _HEADERS[key] = ds
        while len(_HEADERS) > 256:
            _HEADERS.popitem(last=False)
    return ds


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def decoded_frame(key: str, opener: Callable[[], BinaryIO], index: int
                  ) -> tuple[Dataset, np.ndarray]:
    """The header and the decoded pixels of frame ``index`` (0-based) of a stored file."""
    ds = _header(key, opener)
    if index < 0 or index >= frame_count(ds):
        raise RenderError(f"frame {index + 1} does not exist; the instance has "
                          f"{frame_count(ds)}")
    cached = _FRAMES.get((key, index))
    if cached is not None:
        return ds, cached
    if "PixelData" not in ds and "FloatPixelData" not in ds \
            and "DoubleFloatPixelData" not in ds:
        # stop_before_pixels leaves pixel data out; check for it in the whole file instead
        with opener() as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = dcmread(fh, force=True, specific_tags=["PixelData", "FloatPixelData",
                                                          "DoubleFloatPixelData"])
        if not any(t in full for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise RenderError("the instance has no pixel data")
    try:
        with opener() as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = pixel_array(fh, index=index)
    except Exception as exc:  # any decoder failure: the image cannot be shown
        raise RenderError(f"the pixel data cannot be decoded: {exc}") from None
    pixels.setflags(write=False)
    _FRAMES.put((key, index), pixels)
    return ds, pixels


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = next(iter(value))  # type: ignore[call-overload]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, StopIteration):
        return None


def _downscale(pixels: np.ndarray, viewport: tuple[int, int] | None) -> np.ndarray:
    """Block-average by the largest whole factor that keeps the image above the viewport."""
    if viewport is None:
        return pixels
    rows, cols = pixels.shape[:2]
    factor = int(min(rows / max(1, viewport[1]), cols / max(1, viewport[0])))
    if factor < 2:
        return pixels
    h, w = rows // factor, cols // factor
    cropped = pixels[: h * factor, : w * factor]
    shape = (h, factor, w, factor, *pixels.shape[2:])
    return cropped.reshape(shape).mean(axis=(1, 3))


def _window_to_unit(values: np.ndarray, window: Window) -> np.ndarray:
    c, w = window.center, max(window.width, 1.0)
    function = window.function.upper()
    if function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - c) / w)))
    if function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    w = max(w, 1.0 + 1e-6)
    return np.clip((values - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def _grey(ds: Dataset, pixels: np.ndarray, window: Window | None, index: int) -> np.ndarray:
    values = pixels.astype(np.float32)
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    if slope != 1.0 or intercept != 0.0:
        values = values * slope + intercept
    if window is None and "VOILUTSequence" in ds:
        try:
            lut = apply_voi(pixels, ds, index=0).astype(np.float32)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            unit = lut / float(2**bits - 1)
        except Exception:  # a broken VOI LUT falls back to the full range
            unit = None
        if unit is not None:
            return np.clip(unit, 0.0, 1.0)
    if window is None:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
            window = Window(center, width, function)
    if window is None:
        lo, hi = float(values.min()), float(values.max())
        window = Window((lo + hi) / 2.0, max(hi - lo, 1.0), "LINEAR_EXACT")
    return _window_to_unit(values, window)


def render_pixels(ds: Dataset, pixels: np.ndarray, *, window: Window | None = None,
                  viewport: tuple[int, int] | None = None, index: int = 0) -> Image.Image:
    """The displayable image of one decoded frame."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgb = apply_color_lut(pixels, ds)
        peak = 255.0 if rgb.dtype == np.uint8 else 65535.0
        pixels = _downscale(rgb.astype(np.float32) / peak * 255.0, viewport)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    elif pixels.ndim == 3:
        bits = int(ds.get("BitsStored", 8) or 8)
        scaled = _downscale(pixels.astype(np.float32), viewport)
        if bits > 8:
            scaled = scaled / float(2**bits - 1) * 255.0
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "RGB")
    else:
        unit = _grey(ds, _downscale(pixels, viewport), window, index)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
        image = Image.fromarray((unit * 255.0 + 0.5).astype(np.uint8), "L")
    if viewport is not None:
        scale = min(viewport[0] / image.width, viewport[1] / image.height)
        if scale < 1.0:
            size = (max(1, math.floor(image.width * scale)),
                    max(1, math.floor(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
    return image


def render_frame(key: str, opener: Callable[[], BinaryIO], index: int, *,
                 media_type: str = "image/jpeg", window: Window | None = None,
                 viewport: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    """Frame ``index`` (0-based) of a stored instance as JPEG or PNG bytes."""
    ds, pixels = decoded_frame(key, opener, index)
    image = render_pixels(ds, pixels, window=window, viewport=viewport, index=index)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, "PNG", compress_level=3)
    else:
        image.save(out, "JPEG", quality=max(1, min(100, quality)))
    return out.getvalue()
