"""Preprocessing: the reference constants and resize, EXIF orientation, undecodable data."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model_worker.model.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ImageDecodeError,
    decode_image,
    preprocess_image,
)


def photo(size=(333, 211)) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encode(image: Image.Image, fmt="JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_reference_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_matches_lavis_eval_processor_pipeline():
    transforms = pytest.importorskip("torchvision.transforms")
    lavis = transforms.Compose([  # Blip2ImageEvalProcessor(image_size=224)
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    image = photo()
    assert torch.equal(preprocess_image(image), lavis(image))


def test_resize_ignores_aspect_ratio_and_normalises():
    image = photo((500, 100))
    expected = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    expected = (expected - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    ours = preprocess_image(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_exif_orientation_is_honoured_and_untagged_images_untouched():
    image = photo((300, 200))
    untagged = decode_image(encode(image, "PNG"))
    assert np.array_equal(np.asarray(untagged), np.asarray(image))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = decode_image(encode(image, "PNG", exif=exif))
    assert rotated.size == (200, 300)
    assert np.array_equal(np.asarray(rotated), np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


def test_rgba_and_grey_become_rgb():
    assert decode_image(encode(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), "PNG")).mode == "RGB"
    assert decode_image(encode(Image.new("L", (8, 8), 7), "PNG")).mode == "RGB"


@pytest.mark.parametrize("data", [b"", b"GIF89a broken", encode(photo())[:200]])
def test_undecodable_data(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)
