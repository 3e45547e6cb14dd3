"""``download``: fetch the four published artefacts into a directory (resumable, verified)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, required=True, help="weights directory to fill")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a connection (default 10)")
    parser.add_argument("--hub-endpoint", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                        help="Hugging Face hub (or mirror) URL; default $HF_ENDPOINT or https://huggingface.co")
    parser.add_argument("--lavis-base-url", default=None,
                        help="base URL of the two LAVIS files (a mirror); default: Salesforce's published location")


def run(args: argparse.Namespace) -> int:
    from model_worker.model.download import LAVIS_BASE, DownloadError, artefacts, download_all

    files = artefacts(lavis_base=args.lavis_base_url or LAVIS_BASE)
    try:
        download_all(args.dest, files=files, hub_endpoint=args.hub_endpoint, timeout=args.timeout)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"all weights present in {args.dest}")
    return 0
