"""Image files for intake tests, built with Pillow (and by hand where Pillow refuses to write them)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)
SECRET = "SECRET-LOCATION-35.6N"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(Image.new("RGB", size, RED), "JPEG", quality=95)


def truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` with only a few bytes of pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def text_file() -> bytes:
    return b"This is not a picture, just text pretending to be one.\n"


def animated_gif() -> bytes:
    first, second = Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK


def png_16bit_grey(value: int = 40000) -> bytes:
    return encode(Image.new("I;16", (32, 32), value), "PNG")


def exif_rotated_photo() -> bytes:
    """A 60x30 JPEG, left half red and right half blue, whose EXIF says "rotate 90° clockwise" (6),
    with a description and GPS data that must not survive intake."""
    image = Image.new("RGB", (60, 30), RED)
    image.paste(BLUE, (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = SECRET
    exif.get_ifd(0x8825).update({1: "N", 2: (35.0, 41.0, 0.0), 3: "E", 4: (139.0, 41.0, 0.0)})
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def rgba_webp() -> bytes:
    return encode(Image.new("RGBA", (20, 20), (0, 0, 255, 0)), "WEBP", lossless=True)


def palette_bmp() -> bytes:
    return encode(Image.new("RGB", (16, 16), BLUE).convert("P"), "BMP")
