"""Small real images for tests (distinct colours give distinct hashes and embeddings)."""

from __future__ import annotations

import io

from PIL import Image, ImageColor


def png(color: tuple[int, int, int] | str = (200, 30, 40), size: tuple[int, int] = (96, 80)) -> bytes:
    """A two-coloured PNG: ``color`` with a contrasting rectangle, so the image is not flat."""
    rgb = ImageColor.getrgb(color) if isinstance(color, str) else color
    image = Image.new("RGB", size, rgb)
    width, height = size
    image.paste((255 - rgb[0], rgb[1], 90), (width // 10, height // 7, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
