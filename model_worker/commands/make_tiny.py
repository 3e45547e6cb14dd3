"""``make-tiny``: write tiny random weights in the real file formats (tests, dry runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and tokenizer (default 0)")
    parser.add_argument("--scale", type=int, default=1, metavar="N",
                        help="multiply every width by N, for files big enough to time loading (default 1)")


def run(args: argparse.Namespace) -> int:
    from model_worker.model.tiny import make_tiny

    make_tiny(args.out, seed=args.seed, scale=args.scale)
    print(f"tiny weights written to {args.out}")
    return 0
