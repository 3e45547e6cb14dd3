"""Image intake: recognised by content, capped before decoding, normalised once, metadata dropped."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.chat.failures import rejected_image_text
from bot.chat.images import ImageLimits, NormalisedImage, Rejected, intake_attachment, intake_attachments
from bot.chat.messages import AttachmentAccessError, AttachmentRef
from tests.support import hostile_images as h

LIMITS = ImageLimits(max_bytes=20_000_000, max_pixels=50_000_000, max_side=2048)


class Upload:
    """An attachment whose ``fetch`` returns fixed bytes and counts downloads."""

    def __init__(self, data: bytes, name: str, declared_type: str | None = "image/png",
                 declared_size: int | None = None, width: int | None = None, height: int | None = None) -> None:
        self.data, self.fetches = data, 0
        self.ref = AttachmentRef(filename=name, declared_type=declared_type,
                                 declared_size=len(data) if declared_size is None else declared_size,
                                 fetch=self.fetch, width=width, height=height)

    async def fetch(self) -> bytes:
        self.fetches += 1
        return self.data


async def accept(data: bytes, name: str = "image", limits: ImageLimits = LIMITS) -> tuple[NormalisedImage, Image.Image]:
    result = await intake_attachment(Upload(data, name).ref, limits)
    assert isinstance(result, NormalisedImage), result
    assert result.png.startswith(b"\x89PNG")
    decoded = Image.open(io.BytesIO(result.png))
    assert decoded.mode == "RGB" and decoded.size == (result.width, result.height)
    return result, decoded


async def reject(data: bytes, name: str, **upload: object) -> Rejected:
    result = await intake_attachment(Upload(data, name, **upload).ref, LIMITS)
    assert isinstance(result, Rejected), result
    assert result.filename == name
    return result


def close_to(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


async def test_truncated_jpeg_is_reported_as_damaged() -> None:
    rejected = await reject(h.truncated_jpeg(), "cut.jpg", declared_type="image/jpeg")
    assert rejected.reason == "corrupt"
    text = rejected_image_text(rejected, "en", max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    assert "cut.jpg" in text and "damaged" in text and "JPEG, PNG, WebP, GIF, BMP" in text


async def test_png_declaring_50000_square_is_refused_before_decoding() -> None:
    rejected = await reject(h.png_declaring(50_000, 50_000), "bomb.png")
    assert rejected.reason == "too_many_pixels"
    text = rejected_image_text(rejected, "ja", max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    assert "bomb.png" in text and "50 メガピクセル" in text


async def test_pixel_cap_below_pillows_own_guard_is_ours() -> None:
    assert (await reject(h.png_declaring(8000, 8000), "big.png")).reason == "too_many_pixels"


async def test_declared_dimensions_over_the_cap_are_refused_without_downloading() -> None:
    upload = Upload(h.photo_jpeg(), "huge.jpg", width=20_000, height=20_000)
    assert (await intake_attachment(upload.ref, LIMITS)).reason == "too_many_pixels"
    assert upload.fetches == 0


async def test_text_file_named_png_is_not_an_image() -> None:
    rejected = await reject(h.text_file(), "notes.png", declared_type="image/png")
    assert rejected.reason == "unsupported"
    english = rejected_image_text(rejected, "en", max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    japanese = rejected_image_text(rejected, "ja", max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    assert "notes.png" in english and "Accepted: JPEG, PNG, WebP, GIF, BMP" in english
    assert "対応形式: JPEG, PNG, WebP, GIF, BMP" in japanese


async def test_declared_non_image_type_is_refused_without_downloading() -> None:
    upload = Upload(h.text_file(), "notes.txt", declared_type="text/plain")
    assert (await intake_attachment(upload.ref, LIMITS)).reason == "unsupported"
    assert upload.fetches == 0


async def test_a_real_image_with_a_wrong_name_and_no_type_is_accepted() -> None:
    await accept(h.photo_jpeg(), name="photo.txt")


async def test_animated_gif_uses_its_first_frame() -> None:
    _, image = await accept(h.animated_gif(), "anim.gif")
    assert close_to(image.getpixel((16, 16)), h.RED)


async def test_cmyk_jpeg_becomes_rgb_with_the_right_colour() -> None:
    _, image = await accept(h.cmyk_jpeg(), "print.jpg")
    assert close_to(image.getpixel((16, 16)), (255, 0, 0))


async def test_16bit_png_is_scaled_to_8bit_not_clipped() -> None:
    _, image = await accept(h.png_16bit_grey(40000), "deep.png")
    assert close_to(image.getpixel((0, 0)), (156, 156, 156), tolerance=2)


async def test_exif_rotation_is_honoured_and_metadata_dropped() -> None:
    data = h.exif_rotated_photo()
    result, image = await accept(data, "photo.jpg")
    assert image.size == (30, 60)  # rotated 90° clockwise: the red left half is now on top
    assert close_to(image.getpixel((15, 10)), h.RED) and close_to(image.getpixel((15, 50)), h.BLUE)
    assert not image.getexif() and "exif" not in image.info and "icc_profile" not in image.info
    assert h.SECRET.encode() not in result.png and h.SECRET.encode() in data


async def test_alpha_webp_and_palette_bmp_become_rgb() -> None:
    _, transparent = await accept(h.rgba_webp(), "clear.webp")
    assert transparent.getpixel((5, 5)) == (255, 255, 255)  # fully transparent -> white background
    _, palette = await accept(h.palette_bmp(), "old.bmp")
    assert close_to(palette.getpixel((5, 5)), h.BLUE)


async def test_large_images_are_scaled_down_to_the_longest_side_only_when_needed() -> None:
    limits = ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels, max_side=256)
    big, _ = await accept(h.photo_jpeg((1000, 500)), limits=limits)
    assert (big.width, big.height) == (256, 128)
    small, _ = await accept(h.photo_jpeg((200, 100)), limits=limits)
    assert (small.width, small.height) == (200, 100)


async def test_byte_cap_is_checked_from_metadata_then_from_content() -> None:
    upload = Upload(h.photo_jpeg(), "big.jpg", declared_size=30_000_000)
    assert (await intake_attachment(upload.ref, LIMITS)).reason == "too_large"
    assert upload.fetches == 0
    tight = ImageLimits(max_bytes=100, max_pixels=LIMITS.max_pixels, max_side=2048)
    liar = Upload(h.photo_jpeg(), "liar.jpg", declared_size=10)
    assert (await intake_attachment(liar.ref, tight)).reason == "too_large"


async def test_access_error_has_its_own_message() -> None:
    async def refuse() -> bytes:
        raise AttachmentAccessError("HTML login page instead of the file")

    ref = AttachmentRef(filename="private.png", declared_type="image/png", declared_size=10, fetch=refuse)
    rejected = await intake_attachment(ref, LIMITS)
    assert rejected.reason == "no_access"
    text = rejected_image_text(rejected, "en", max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    assert "private.png" in text and "HTML" not in text


async def test_identical_images_share_a_hash_and_order_is_kept() -> None:
    uploads = [Upload(h.photo_jpeg(), "a.jpg"), Upload(h.text_file(), "b.png"), Upload(h.animated_gif(), "c.gif"),
               Upload(h.photo_jpeg(), "d.jpg")]
    results = await intake_attachments([u.ref for u in uploads], LIMITS)
    assert [type(r).__name__ for r in results] == ["NormalisedImage", "Rejected", "NormalisedImage",
                                                   "NormalisedImage"]
    assert results[0].sha256 == results[3].sha256 != results[2].sha256


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_rejection_reason_has_a_message(lang: str) -> None:
    for reason in ("unsupported", "too_large", "too_many_pixels", "corrupt", "no_access"):
        text = rejected_image_text(Rejected("f.png", reason), lang, max_bytes=20_000_000, max_pixels=50_000_000)
        assert "f.png" in text and "{" not in text
