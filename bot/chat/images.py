"""Image intake: check an attachment's metadata, fetch it, recognise it by content, normalise it once.

Accepted, by magic bytes (never by file name or declared type): JPEG, PNG, WebP, GIF (first frame), BMP.
Before any pixel is decoded the byte cap and the pixel cap (read from the header; Pillow's
``Image.open`` reads only the header, and its own decompression-bomb guard is caught as well) stop
oversized files. Normalising honours EXIF orientation, keeps the first frame, converts CMYK, 16-bit,
palette and alpha images to RGB (alpha over white), scales down only beyond ``max_side``, and re-encodes
losslessly as PNG from raw pixels, so no metadata (EXIF, GPS, ICC, text chunks) survives.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.chat.messages import (
    AttachmentAccessError,
    AttachmentError,
    AttachmentFetchError,
    AttachmentRef,
    AttachmentTooLarge,
)

log = logging.getLogger(__name__)

ACCEPTED_TYPES = "JPEG, PNG, WebP, GIF, BMP"

RejectReason = Literal["unsupported", "too_large", "too_many_pixels", "corrupt", "no_access", "fetch_failed"]


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int


@dataclass(frozen=True)
class NormalisedImage:
    png: bytes
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Rejected:
    """An attachment that was not used, and why (the service turns it into a localised notice)."""

    filename: str
    reason: RejectReason


class ImageRejected(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name for accepted image bytes, from their magic bytes; ``None`` otherwise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    return None


def normalise_image(data: bytes, limits: ImageLimits) -> NormalisedImage:
    """Check and normalise image bytes (blocking, CPU-bound). Raises :class:`ImageRejected`."""
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("unsupported", f"magic bytes {data[:8]!r}")
    with _open_checked(data, fmt, limits) as image:
        try:
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageRejected("corrupt", f"{fmt}: {exc}") from exc
    rgb = _to_rgb(upright)
    if max(rgb.size) > limits.max_side:
        rgb.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    return _encode_png(rgb)


def _open_checked(data: bytes, fmt: str, limits: ImageLimits) -> Image.Image:
    """Open (header only) as the sniffed format and refuse too many pixels before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected("corrupt", f"{fmt}: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        image.close()
        raise ImageRejected("too_many_pixels", f"{width}x{height}")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels: 16-bit/float greys rescaled, palette and alpha composited over white, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _encode_png(image: Image.Image) -> NormalisedImage:
    clean = Image.frombytes("RGB", image.size, image.tobytes())  # fresh image: no info, no metadata
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", optimize=False, compress_level=6)
    png = buffer.getvalue()
    return NormalisedImage(png, hashlib.sha256(png).hexdigest(), clean.width, clean.height)


async def intake_attachment(ref: AttachmentRef, limits: ImageLimits) -> NormalisedImage | Rejected:
    """Check ``ref``'s metadata, fetch it, and normalise it in a worker thread."""
    early = _metadata_refusal(ref, limits)
    if early is not None:
        log.info("attachment %r refused before download: %s", ref.filename, early)
        return Rejected(ref.filename, early)
    try:
        data = await ref.fetch()
    except AttachmentError as exc:
        log.warning("attachment %r could not be fetched: %s", ref.filename, exc)
        return Rejected(ref.filename, _FETCH_REFUSALS.get(type(exc), "fetch_failed"))
    try:
        return await asyncio.to_thread(normalise_image, data, limits)
    except ImageRejected as exc:
        log.info("attachment %r rejected (%s): %s", ref.filename, exc.reason, exc)
        return Rejected(ref.filename, exc.reason)


async def intake_attachments(refs: Sequence[AttachmentRef],
                             limits: ImageLimits) -> list[NormalisedImage | Rejected]:
    """Each attachment in order, one at a time (bounded memory), accepted or rejected."""
    return [await intake_attachment(ref, limits) for ref in refs]


_FETCH_REFUSALS: dict[type[AttachmentError], RejectReason] = {
    AttachmentAccessError: "no_access",
    AttachmentTooLarge: "too_large",
    AttachmentFetchError: "fetch_failed",
}


def _metadata_refusal(ref: AttachmentRef, limits: ImageLimits) -> RejectReason | None:
    if ref.declared_size is not None and ref.declared_size > limits.max_bytes:
        return "too_large"
    declared = (ref.declared_type or "").split(";")[0].strip().lower()
    # An undeclared or generic type is fetched and judged by content; a declared non-image is not.
    if declared and not declared.startswith("image/") and declared != "application/octet-stream":
        return "unsupported"
    if ref.width and ref.height and ref.width * ref.height > limits.max_pixels:
        return "too_many_pixels"
    return None
