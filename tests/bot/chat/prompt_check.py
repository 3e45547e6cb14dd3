"""Rebuild the prompt the worker builds for a request, with the worker's own prompt module and tokenizer."""

from __future__ import annotations

from pathlib import Path

from model_worker.model.arch import load_arch
from model_worker.model.prompt import TokenizedPrompt, build_prompt, tokenize_prompt
from model_worker.model.tokenizer import Tokenizer
from model_worker.wire.protocol import ChatRequest


def worker_prompt(weights_dir: Path, request: ChatRequest) -> TokenizedPrompt:
    """The tokenized prompt for ``request`` (its ``length`` is what the worker reports as prompt_tokens
    when no turn had to be dropped)."""
    tokenizer = Tokenizer(weights_dir / "gpt-neox")
    num_queries = load_arch(weights_dir).qformer.num_queries
    return tokenize_prompt(build_prompt(request.conversation), tokenizer, num_queries=num_queries)
