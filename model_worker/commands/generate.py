"""``generate``: answer one prompt or conversation from the command line (prints the reply or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from model_worker.commands.model_flags import add_model_arguments
from model_worker.wire.protocol import ChatRequest, GenerationParams, ImageRef, Turn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="weights directory (sources or bundle)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user's text (with --image for images)")
    source.add_argument("--conversation", type=Path,
                        help='JSON list of turns {"role": "user"|"assistant", "text": str, "images": [paths]}; '
                             "relative image paths are read from the file's directory")
    parser.add_argument("--image", type=Path, action="append", default=[], help="image for --prompt (repeatable)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.85)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (text, token_ids, device, dtype, quantize, timings...)")


def _read_turns(args: argparse.Namespace) -> list[Turn]:
    if args.prompt is not None:
        images = [ImageRef.from_bytes(path.read_bytes()) for path in args.image]
        return [Turn(role="user", text=args.prompt, images=images)]
    if args.image:
        raise ValueError("--image goes with --prompt; put a conversation's images in its JSON file")
    raw = json.loads(args.conversation.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise ValueError("the conversation file must hold a JSON list of turns")
    base = args.conversation.parent
    return [Turn(role=turn["role"], text=turn.get("text", ""),
                 images=[ImageRef.from_bytes((base / p).read_bytes()) for p in turn.get("images", [])])
            for turn in raw]


def _request(args: argparse.Namespace) -> ChatRequest:
    params = GenerationParams(max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    return ChatRequest(conversation=_read_turns(args), generation=params)


def run(args: argparse.Namespace) -> int:
    from model_worker.engine.engine import load_engine
    from model_worker.engine.options import EngineOptions
    from model_worker.engine.sequence import EngineError
    from model_worker.model.weights import WeightsError

    try:
        request = _request(args)
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        print(f"error: bad input: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        engine = load_engine(args.weights, device=args.device, dtype=args.dtype, quantize=args.quantize,
                             options=EngineOptions(max_batch_size=1))
    except (WeightsError, ValueError) as exc:
        print(f"error: cannot load the weights: {exc}", file=sys.stderr)
        return 1
    load_s = time.perf_counter() - started
    try:
        result = _generate(engine, request, stream=not args.json)
    except EngineError as exc:
        print(f"error ({exc.code.value}): {exc.message}", file=sys.stderr)
        return 2
    result["timings"]["load_s"] = load_s
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    return 0


def _generate(engine, request: ChatRequest, *, stream: bool) -> dict:
    """Run one request to completion; with ``stream`` print the reply as it grows."""
    t0 = time.perf_counter()
    seq = engine.prepare(request)
    t1 = time.perf_counter()
    engine.prefill([seq])
    t2 = time.perf_counter()
    shown = _show(seq.text, "", stream)
    while not seq.finished:
        engine.decode([seq])
        shown = _show(seq.text, shown, stream)
    t3 = time.perf_counter()
    engine.release(seq)
    if stream:
        print()
    decode_steps = max(len(seq.state.generated) - 1, 1)
    timings = {"prepare_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0,
               "decode_tokens_per_s": decode_steps / max(t3 - t2, 1e-9)}
    return {"text": seq.text, "token_ids": seq.output_ids, "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": seq.state.steps, "finish_reason": seq.finish_reason.value,
            "seed": seq.state.sampler.seed, **engine.loaded.describe(), "timings": timings}


def _show(text: str, shown: str, stream: bool) -> str:
    if stream and len(text) > len(shown):
        print(text[len(shown):], end="", flush=True)
    return text
