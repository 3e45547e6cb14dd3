"""``convert``: write the published weights as one memory-mappable safetensors bundle directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="directory with the four source artefacts")
    parser.add_argument("--out", type=Path, required=True,
                        help="bundle directory to write; it can be passed as --weights afterwards")


def run(args: argparse.Namespace) -> int:
    from model_worker.model.convert import convert_weights
    from model_worker.model.weights import WeightsError

    try:
        path = convert_weights(args.weights, args.out, progress=lambda message: print(message, file=sys.stderr))
    except (WeightsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"bundle written to {path}")
    return 0
