"""Safe image decoding: size limits against decompression bombs, clear errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelloop.errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000


def allow_pixels(max_pixels: int) -> None:
    """Make `max_pixels` (LABELLOOP_MAX_IMAGE_PIXELS) the one limit. Pillow refuses images
    over its own MAX_IMAGE_PIXELS (~89 MP) whatever the setting, so a 92 MP slide failed
    at the 100 MP default and raising the setting did not help. Pillow's ceiling is only
    ever raised here (it is process-wide); every decode checks the setting explicitly."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def probe_image(
    data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int, str]:
    """Return (width, height, format) after fully verifying the file decodes."""
    arr = decode_image(data, name=name, max_pixels=max_pixels)
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "unknown").lower()
    return arr.shape[1], arr.shape[0], fmt


def decode_image(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    upright: bool = False,
) -> np.ndarray:
    """Decode to an RGB uint8 array (H, W, 3); raise InputError naming the file on any defect.
    `upright` also refuses an image that viewers turn by its EXIF orientation, read from
    the same opened file (`_refuse_turned`)."""
    if not data:
        raise InputError("image file is empty", file=name)
    allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(
                        f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
                        file=name,
                    )
                if upright:
                    _refuse_turned(im, name)
                im.load()
                rgb = im.convert("RGB")
    except InputError:
        raise
    except UnidentifiedImageError as exc:  # its message names a BytesIO, not the file
        raise InputError(
            f"cannot decode image: a damaged image, or a format Pillow does not read (it "
            f"starts {data[:8]!r})",
            file=name,
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot decode image ({exc})", file=name) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image exceeds the pixel limit ({exc})", file=name) from exc
    return np.asarray(rgb, dtype=np.uint8)


# EXIF orientations other than 1 and how viewers show the stored pixels.
TURNS = {
    2: "mirrored",
    3: "turned 180 degrees",
    4: "mirrored upside down",
    5: "mirrored and turned 90 degrees",
    6: "turned 90 degrees clockwise",
    7: "mirrored and turned 90 degrees",
    8: "turned 90 degrees counter-clockwise",
}


def _refuse_turned(im: Image.Image, name: str) -> None:
    """Refuse an image whose EXIF orientation tells viewers to turn it. Labelling tools
    (Label Studio, CVAT, Roboflow, Ultralytics) draw on the turned picture while every
    stage here reads the pixels as stored, so every box or outline would land turned or
    mirrored, and a square image would not even fail a size check."""
    try:
        orientation = im.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError):  # damaged EXIF: the pixels decide, not it
        return
    if orientation in TURNS:
        raise InputError(
            f"image carries EXIF orientation {orientation}: labelling tools show it "
            f"{TURNS[orientation]} and draw on that, while labelloop reads the pixels as "
            "stored, so annotations would land in the wrong place. Save it turned "
            "(PIL ImageOps.exif_transpose, `mogrify -auto-orient`, `exiftran -ai`) and "
            "ingest that",
            file=name,
        )


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
