"""Opening image files safely: a size limit checked before decoding, a full decode, and
high-bit-depth modes rescaled to 8 bits (Pillow's ``convert("RGB")`` clips them)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Environment variable that raises (or lowers) the pixel limit of :func:`open_image`.
PIXELS_ENV = "LVLM_LENS_MAX_IMAGE_PIXELS"
#: Images above this many pixels are refused unless :data:`PIXELS_ENV` says otherwise.
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold

_WIDE = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0}
#: Divisor of a mode-"I" (signed 32-bit) image whose values go beyond 16 bits: 2**31 - 1 -> 255.
INT32_DIVISOR = (2**31 - 1) / 255.0


def _int32_to_8bit(arr: np.ndarray) -> np.ndarray:
    """Mode "I" by its actual range: within [0, 65535] it is 16-bit data (divided by 257, as
    Pillow opens many 16-bit files as "I"), larger non-negative values span the 31-bit positive
    range (divided by :data:`INT32_DIVISOR`), and negative values are stretched min..max."""
    if not arr.size:
        return arr
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        return (arr - lo) * (255.0 / (hi - lo))
    return arr / (257.0 if hi <= 65535 else INT32_DIVISOR)


def max_pixels() -> int:
    """The pixel limit: :data:`PIXELS_ENV` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(PIXELS_ENV)
    if value is None:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{PIXELS_ENV}={value!r}: expected a number of pixels") from None


def to_8bit(image: Image.Image) -> Image.Image:
    """An 8-bit image of the same content: 16-bit images divided by 257 (65535 -> 255),
    32-bit integer (mode "I") images by their value range (see :func:`_int32_to_8bit`),
    float images in [0, 1] scaled by 255 (otherwise clipped to [0, 255]); other modes
    unchanged."""
    if image.mode in _WIDE:
        arr = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr / _WIDE[image.mode]), 0, 255).astype(np.uint8))
    if image.mode == "I":
        arr = _int32_to_8bit(np.asarray(image, dtype=np.float64))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if image.mode == "F":
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if arr.size and arr.min() >= 0 and arr.max() <= 1 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
    return image


def open_image(path: str | Path, where: str) -> Image.Image:
    """Open, size-check (from the header, before decoding) and fully decode an image file.

    Args:
        path: The file.
        where: What names it in errors (``"data.csv row 3"``, ``"--baseline-image"``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not an image, truncated or damaged, or above the pixel limit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {str(path)!r} not found")
    limit, saved = max_pixels(), Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the limit is checked here, with a message that says how
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        w, h = im.size
        if w * h > limit:
            im.close()
            raise ValueError(
                f"{where}: {str(path)!r} is {w}x{h} = {w * h:,} pixels, above the limit of "
                f"{limit:,} (a guard against decompression bombs): if you trust the file, "
                f"raise it with {PIXELS_ENV}={w * h}"
            )
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{where}: {str(path)!r} is not a readable image ({err})") from err
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return im
