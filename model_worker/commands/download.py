"""``download``: fetch the four published artefacts into a directory (resumable, verified)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, required=True, help="weights directory to fill")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a connection (default 10)")


def run(args: argparse.Namespace) -> int:
    from model_worker.model.download import DownloadError, download_all

    try:
        download_all(args.dest, timeout=args.timeout)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"all weights present in {args.dest}")
    return 0
