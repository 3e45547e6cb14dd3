"""``embed``: write an image's projected embeddings ([num_queries, LLM hidden], float32) as a .npy file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_worker.commands.model_flags import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="weights directory (sources or bundle)")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the .npy file to write")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from model_worker.model.loader import load_model
    from model_worker.model.preprocess import ImageDecodeError, decode_image, preprocess_images
    from model_worker.model.weights import WeightsError

    try:
        image = decode_image(args.image.read_bytes())
        loaded = load_model(args.weights, device=args.device, dtype=args.dtype, quantize=args.quantize)
    except (OSError, ImageDecodeError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pixels = preprocess_images([image], image_size=loaded.arch.vision.image_size)
    with torch.inference_mode():
        embeds = loaded.model.encode_images(pixels.to(loaded.device))[0]
    np.save(args.out, embeds.float().cpu().numpy())
    print(f"wrote {tuple(embeds.shape)} float32 embeddings to {args.out}")
    return 0
