"""Image decoding and the reference preprocessing (model.md §1, LAVIS ``Blip2ImageEvalProcessor``).

RGB, resize to exactly ``image_size`` x ``image_size`` with PIL bicubic (no crop, aspect ratio not kept),
scale to [0, 1] as float32, normalise with the CLIP mean and std. EXIF orientation is applied first; an
image without an orientation tag gets exactly the reference pixels.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageDecodeError(ValueError):
    """The bytes are not an image PIL can decode."""


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB PIL image with its EXIF orientation applied."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: PIL's codecs and EXIF parsing raise many types
        raise ImageDecodeError(f"not a decodable image ({type(exc).__name__}: {exc})") from exc


def preprocess_image(image: Image.Image, *, image_size: int = 224) -> torch.Tensor:
    """The reference pixel tensor [3, image_size, image_size] (float32) for an RGB PIL image."""
    resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    scaled = pixels.to(torch.float32).div(255)  # as torchvision's ToTensor
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return scaled.sub(mean).div(std)


def preprocess_images(images: list[Image.Image], *, image_size: int = 224) -> torch.Tensor:
    """A batch [B, 3, image_size, image_size] of reference pixel tensors."""
    return torch.stack([preprocess_image(img, image_size=image_size) for img in images])
