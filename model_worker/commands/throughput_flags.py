"""``serve``'s throughput options: batch limits, image, prefix and KV caches, CUDA graphs, compiled decode."""

from __future__ import annotations

import argparse

from model_worker.engine.options import EngineOptions
from model_worker.wire.protocol import CONTEXT_LENGTH

_DEFAULTS = EngineOptions()


def add_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that shape batching and caching."""
    group = parser.add_argument_group("throughput")
    group.add_argument("--max-batch-size", type=positive(int), default=_DEFAULTS.max_batch_size,
                       help=f"sequences decoded together at most (default {_DEFAULTS.max_batch_size})")
    group.add_argument("--max-tokens-in-flight", type=_non_negative(int), default=0, metavar="N",
                       help="admit no request while the running ones' prompts plus max_new_tokens would "
                            "exceed N positions (0: no limit, the default)")
    group.add_argument("--image-cache-size", type=_non_negative(int), default=_DEFAULTS.image_cache_entries,
                       metavar="N", help=f"image embeddings kept by content hash "
                                         f"(default {_DEFAULTS.image_cache_entries})")
    group.add_argument("--image-cache-mb", type=_non_negative(float), default=_DEFAULTS.image_cache_mb,
                       help=f"memory the image embeddings may take (default {_DEFAULTS.image_cache_mb:g})")
    group.add_argument("--prefix-cache-tokens", type=_non_negative(int), default=_DEFAULTS.prefix_cache_tokens,
                       metavar="N", help="positions of finished answers' KV kept so that a follow-up turn "
                                         f"prefills only its new tokens (0 disables; default "
                                         f"{_DEFAULTS.prefix_cache_tokens})")
    group.add_argument("--kv-cache-positions", type=positive(int), default=None, metavar="N",
                       help="positions per batch row the preallocated KV cache may hold; it grows on demand up "
                            "to --max-batch-size rows of N, and prompt plus new tokens must fit N "
                            f"(default: the model's context, {CONTEXT_LENGTH})")
    group.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                       help="on a CUDA device, run decode steps eagerly instead of replaying them as CUDA graphs "
                            "(graphs are on by default there; CPU runs never use them)")
    group.add_argument("--compile-decode", action="store_true",
                       help="torch.compile the language model's MLPs (the first requests wait for the compiler; "
                            "about 20%% faster CPU decode steps on tiny weights; off by default)")


def engine_options_from_args(args: argparse.Namespace) -> EngineOptions:
    """The engine's options from parsed arguments."""
    return EngineOptions(max_batch_size=args.max_batch_size, image_cache_entries=args.image_cache_size,
                         image_cache_mb=args.image_cache_mb, prefix_cache_tokens=args.prefix_cache_tokens,
                         kv_cache_positions=args.kv_cache_positions, cuda_graphs=args.cuda_graphs,
                         compile_decode=args.compile_decode)


def max_tokens_in_flight(args: argparse.Namespace) -> int | None:
    """The scheduler's tokens-in-flight limit (None: none)."""
    return args.max_tokens_in_flight or None


def positive(kind: type) -> object:
    """An argparse type: ``kind`` values greater than 0."""
    return _at_least(kind, 0, inclusive=False)


def _non_negative(kind: type) -> object:
    return _at_least(kind, 0, inclusive=True)


def _at_least(kind: type, minimum: float, *, inclusive: bool) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value < minimum or (value == minimum and not inclusive):
            relation = "0 or more" if inclusive else "greater than 0"
            raise argparse.ArgumentTypeError(f"must be {relation}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
