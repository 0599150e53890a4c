"""Rendered images (PS3.18 8.3.5, 9; PS3.4 N.2 pixel transformations): dataset -> JPEG/PNG/GIF.

Pure functions, no I/O: `render` takes a pydicom dataset, a frame number and the request's
parameters and returns the encoded image; `render_frame` takes a frame already decoded and the
attributes that describe it (what `storage.retrieve.retrieval.native_frame` gives without reading the
whole object). Grayscale goes through the Modality LUT (rescale slope/intercept, or the
frame's Pixel Value Transformation in enhanced objects), then the VOI (the query's window,
else the dataset's Window Center/Width or VOI LUT, else the frame's min/max), then MONOCHROME1
inversion, computed once per stored value into a lookup table for 8- and 16-bit pixels.
Colour comes from pydicom's pixel_array as RGB (YBR converted by pixel_array itself, palette
colour through its LUT) scaled to 8 bits. Then the region is cut out and scaled to fit the
viewport, preserving the aspect ratio.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

FUNCTIONS = ("linear", "linear-exact", "sigmoid")
THUMBNAIL = (128, 128)
DEFAULT_QUALITY = 90
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and function."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True, slots=True)
class RenderParams:
    media_type: str = "image/jpeg"
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    #: fit the image in (columns, rows), preserving the aspect ratio
    viewport: tuple[int, int] | None = None
    #: source region in pixels (x, y, width, height), PS3.18 8.3.5.1.3
    source: tuple[int, int, int, int] | None = None
    #: source region as fractions of the image (x1, y1, x2, y2), WADO-URI `region` (PS3.18 9)
    region: tuple[float, float, float, float] | None = None


# ----- parameter parsing (ValueError carries the message for the 400) ---------------------------


def parse_window(value: str) -> Window:
    """`window=center,width[,function]` (PS3.18 8.3.5.1.4); function linear, linear-exact or sigmoid."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window must be center,width[,function]")
    function = parts[2].lower().replace("_", "-") if len(parts) == 3 and parts[2] else "linear"
    if function not in FUNCTIONS:
        raise ValueError(f"window function must be one of {', '.join(FUNCTIONS)}")
    return make_window(parts[0], parts[1], function)


def make_window(center: str, width: str, function: str = "linear") -> Window:
    try:
        c, w = float(center), float(width)
    except ValueError:
        raise ValueError("window center and width must be decimal numbers") from None
    if not np.isfinite(c) or not np.isfinite(w) or w < (1 if function == "linear" else 0) or w == 0:
        raise ValueError("window width must be at least 1 (greater than 0 for linear-exact and sigmoid)")
    return Window(c, w, function)


def parse_viewport(value: str) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """`viewport=vw,vh[,sx,sy,sw,sh]` (PS3.18 8.3.5.1.3) -> (fit size, source region or None)."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 6):
        raise ValueError("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError("viewport values must be integers") from None
    if nums[0] < 1 or nums[1] < 1 or nums[0] > 8192 or nums[1] > 8192:
        raise ValueError("viewport width and height must be between 1 and 8192")
    if len(nums) == 2:
        return (nums[0], nums[1]), None
    sx, sy, sw, sh = nums[2:]
    if sx < 0 or sy < 0 or sw < 1 or sh < 1:
        raise ValueError("viewport source region needs sx, sy >= 0 and sw, sh >= 1 (flipping is not supported)")
    return (nums[0], nums[1]), (sx, sy, sw, sh)


def parse_quality(value: str) -> int:
    try:
        q = int(value)
    except ValueError:
        raise ValueError("quality must be an integer from 1 to 100") from None
    if not 1 <= q <= 100:
        raise ValueError("quality must be an integer from 1 to 100")
    return q


def parse_region(value: str) -> tuple[float, float, float, float]:
    """WADO-URI `region=x1,y1,x2,y2`, fractions of the image from 0.0 to 1.0 (PS3.18 9)."""
    try:
        x1, y1, x2, y2 = (float(p) for p in value.split(","))
    except ValueError:
        raise ValueError("region must be four decimal numbers x1,y1,x2,y2 between 0 and 1") from None
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ValueError("region must satisfy 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
    return x1, y1, x2, y2


# ----- rendering ----------------------------------------------------------------------------


def render(ds: Dataset, *, frame: int = 1, params: RenderParams | None = None) -> bytes:
    """Encode frame `frame` (1-based) of `ds` as `params.media_type`.

    Raises
    ------
    ValueError
        The dataset has no pixel data, or the frame number is out of range.
    """
    params = params or RenderParams()
    return encode(to_image(ds, frame, params.window), params)


def render_frame(pixels: NDArray[Any], attributes: Dataset, params: RenderParams | None = None) -> bytes:
    """Encode one already decoded frame; `attributes` describe it as a single-frame image.

    The fast path of a rendered request: the frame's pixels from a ranged read and its display
    attributes from the index (`storage.retrieve.retrieval.native_frame`), the same pipeline as `render`.
    """
    params = params or RenderParams()
    return encode(frame_image(pixels, attributes, 1, params.window), params)


def encode(image: Image.Image, params: RenderParams) -> bytes:
    """Cut the region, fit the viewport, and encode at the requested quality."""
    image = _fit(_crop(image, params), params.viewport)
    out = io.BytesIO()
    fmt = _FORMATS[params.media_type]
    if fmt == "JPEG":
        image.save(out, fmt, quality=params.quality)
    else:
        image.save(out, fmt)
    return out.getvalue()


def to_image(ds: Dataset, frame: int, window: Window | None) -> Image.Image:
    """The frame as an 8-bit grayscale or RGB Pillow image, before region and viewport."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("the instance has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise ValueError(f"frame {frame} does not exist; the instance has {frames} frame(s)")
    return frame_image(pixel_array(ds, index=frame - 1), ds, frame, window)


def frame_image(arr: NDArray[Any], ds: Dataset, frame: int, window: Window | None) -> Image.Image:
    """Decoded frame `frame` of `ds` as an 8-bit grayscale or RGB Pillow image."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return Image.fromarray(_to_uint8(apply_color_lut(arr, ds)), "RGB")
    if arr.ndim == 3:
        return Image.fromarray(_to_uint8(arr, int(ds.get("BitsStored", 8) or 8)), "RGB")
    return Image.fromarray(_grayscale(arr, ds, frame, window, invert=photometric == "MONOCHROME1"), "L")


def _grayscale(arr: NDArray[Any], ds: Dataset, frame: int, window: Window | None, *, invert: bool) -> NDArray[np.uint8]:
    """Modality LUT, VOI, MONOCHROME1 inversion (PS3.4 N.2.1), through a lookup table when cheaper.

    Each step maps a stored value to an output value independently of the other pixels (the
    min/max window aside, taken over the values present), so for 8- and 16-bit pixels the
    pipeline runs once per stored value between the frame's minimum and maximum (~4,000 for
    a CT slice) instead of once per pixel (262,144 for 512x512), and the frame becomes one
    table lookup: the same numbers, computed by the same operations, in a tenth of the time.
    """
    size = arr.dtype.itemsize
    if arr.dtype.kind not in "iu" or size > 2 or not arr.size:
        return _gray_values(arr, ds, frame, window, invert=invert)
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo >= arr.size // 4:  # a table not much smaller than the frame saves nothing
        return _gray_values(arr, ds, frame, window, invert=invert)
    unsigned = np.dtype(f"u{size}")
    codes = arr.view(unsigned)  # a signed value's bit pattern indexes its table entry
    domain = np.arange(lo, hi + 1, dtype=np.int64).astype(arr.dtype)

    def present(values: NDArray[np.float64]) -> NDArray[np.float64]:
        counts = np.bincount(codes.ravel(), minlength=1 << (8 * size))
        occurring: NDArray[np.float64] = values[counts[domain.view(unsigned)] > 0]
        return occurring

    table = np.zeros(1 << (8 * size), dtype=np.uint8)
    table[domain.view(unsigned)] = _gray_values(domain, ds, frame, window, invert=invert, present=present)
    return np.take(table, codes)


def _gray_values(
    arr: NDArray[Any],
    ds: Dataset,
    frame: int,
    window: Window | None,
    *,
    invert: bool,
    present: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
) -> NDArray[np.uint8]:
    out = _voi(_modality(arr, ds, frame), ds, frame, window, present)
    return 255 - out if invert else out


def _frame_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional group macro for `frame` (per-frame first, then shared), PS3.3 C.7.6.16."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame - 1), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > index and sequence in items[index] and items[index][sequence].value:
            item: Dataset = items[index][sequence].value[0]
            return item
    return None


def _modality(arr: NDArray[Any], ds: Dataset, frame: int) -> NDArray[np.float64]:
    group = _frame_group(ds, frame, "PixelValueTransformationSequence")
    if group is not None and "RescaleSlope" in group:
        slope, intercept = float(group.RescaleSlope), float(group.get("RescaleIntercept", 0) or 0)
        return arr.astype(np.float64) * slope + intercept
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def _voi(
    values: NDArray[np.float64],
    ds: Dataset,
    frame: int,
    window: Window | None,
    present: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
) -> NDArray[np.uint8]:
    """The VOI transformation to 0..255; `present` picks the values that occur in the frame."""
    if window is None:
        window = _stored_window(ds, frame)
    if window is not None:
        return apply_window(values, window)
    if "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
    sample = values if present is None else present(values)
    lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return np.full(values.shape, 128 if hi > 0 else 0, dtype=np.uint8)
    return np.round((values - lo) / (hi - lo) * 255).astype(np.uint8)


def _stored_window(ds: Dataset, frame: int) -> Window | None:
    source: Dataset | None = _frame_group(ds, frame, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source:
        source = ds
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").lower().replace("_", "-")
    try:
        return make_window(str(_first(center)), str(_first(width)), function if function in FUNCTIONS else "linear")
    except ValueError:
        return None


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple | MultiValue) else value


def apply_window(x: NDArray[np.float64], window: Window) -> NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2: the linear, linear-exact and sigmoid VOI functions to 0..255."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        with np.errstate(over="ignore"):  # exp overflows to inf far below the window: y is then 0
            y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "linear-exact":
        y = np.clip((x - c) / w + 0.5, 0.0, 1.0)
    elif w <= 1:
        y = (x > c - 0.5).astype(np.float64)
    else:
        y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return np.round(y * 255).astype(np.uint8)


def _to_uint8(arr: NDArray[Any], bits: int | None = None) -> NDArray[np.uint8]:
    if arr.dtype == np.uint8:
        return arr
    top = float(2 ** (bits or arr.dtype.itemsize * 8) - 1)
    if bits is None and arr.size and float(arr.max()) <= 255:  # an 8-bit LUT declared as 16
        top = 255.0
    return np.round(np.clip(arr.astype(np.float64), 0, top) / top * 255).astype(np.uint8)


def _crop(image: Image.Image, params: RenderParams) -> Image.Image:
    w, h = image.size
    if params.region is not None:
        x1, y1, x2, y2 = params.region
        box = (int(x1 * w), int(y1 * h), max(int(x1 * w) + 1, round(x2 * w)), max(int(y1 * h) + 1, round(y2 * h)))
        return image.crop(box)
    if params.source is not None:
        sx, sy, sw, sh = params.source
        if sx >= w or sy >= h:
            raise ValueError(f"viewport source region starts outside the {w}x{h} image")
        return image.crop((sx, sy, min(w, sx + sw), min(h, sy + sh)))
    return image


def _fit(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    if viewport is None:
        return image
    w, h = image.size
    scale = min(viewport[0] / w, viewport[1] / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if size == (w, h) else image.resize(size, Image.Resampling.LANCZOS)
