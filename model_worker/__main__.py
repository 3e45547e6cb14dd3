"""``python -m model_worker``: the model worker's command line (also installed as ``minigpt4-worker``)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each subcommand lives in model_worker/commands/<module>.py with ``add_arguments(parser)`` and
# ``run(args) -> int``; they are imported lazily so ``--help`` stays fast and torch loads only when needed.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the worker: HTTP API on a Unix socket or loopback TCP, or a Redis queue consumer"),
    "download": ("download", "fetch the four published weight artefacts into a directory (resumable, verified)"),
    "convert": ("convert", "convert the published weights into one memory-mappable safetensors bundle"),
    "make-tiny": ("make_tiny", "write tiny random weights in the real file formats (tests, dry runs)"),
    "generate": ("generate", "answer one prompt or conversation from the command line"),
    "embed": ("embed", "write an image's projected embeddings as a NumPy array"),
    "health": ("health", "ask a running worker whether it is healthy (exit 0) or stuck (exit 1)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_worker",
        description="The GPU worker for rinna's bilingual MiniGPT-4: loads the model and serves requests.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        module = importlib.import_module(f"model_worker.commands.{module_name}")
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"model_worker.commands.{args._module}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
