"""The context budget: oldest whole turns go first, the latest image turn stays while it fits."""

from __future__ import annotations

import pytest

from model_worker.model.prompt import ContextTooLongError, build_prompt, fit_context, tokenize_prompt
from tests.model_worker.model.test_prompt import T

Q = 4


def length(turns, tok) -> int:
    return tokenize_prompt(build_prompt(turns), tok, num_queries=Q).length


def test_everything_kept_when_it_fits(loaded):
    turns = [T("user", "hello", ["i"]), T("assistant", "hi"), T("user", "again")]
    kept, prompt = fit_context(turns, loaded.tokenizer, num_queries=Q, max_new_tokens=10, context_length=2048)
    assert kept == turns and prompt.length == length(turns, loaded.tokenizer)


def test_oldest_turns_dropped_first_and_image_turn_kept(loaded):
    tok = loaded.tokenizer
    turns = [T("user", "one " * 20), T("assistant", "two " * 20), T("user", "look", ["img"]),
             T("assistant", "three " * 20), T("user", "four " * 20), T("assistant", "five " * 20), T("user", "now?")]
    keep = [turns[2], turns[-1]]
    budget = length(keep, tok) + 5
    kept, prompt = fit_context(turns, tok, num_queries=Q, max_new_tokens=100, context_length=budget + 100)
    assert kept == keep
    assert prompt.length <= budget and prompt.num_images == 1
    # With more room, the newer text turns come back before the older ones.
    budget = length([turns[2], *turns[4:]], tok)
    kept, _ = fit_context(turns, tok, num_queries=Q, max_new_tokens=100, context_length=budget + 100)
    assert kept == [turns[2], *turns[4:]]


def test_image_turn_dropped_when_it_no_longer_fits(loaded):
    tok = loaded.tokenizer
    turns = [T("user", "look", ["img"]), T("assistant", "ok"), T("user", "x " * 30)]
    budget = length(turns[-1:], tok)
    kept, prompt = fit_context(turns, tok, num_queries=Q, max_new_tokens=1, context_length=budget + 1)
    assert kept == turns[-1:] and prompt.num_images == 0


def test_newest_turn_alone_too_long(loaded):
    tok = loaded.tokenizer
    turns = [T("user", "hello"), T("assistant", "hi"), T("user", "word " * 400, ["img"])]
    with pytest.raises(ContextTooLongError) as info:
        fit_context(turns, tok, num_queries=Q, max_new_tokens=512, context_length=600)
    assert info.value.needed == length(turns[-1:], tok) and info.value.available == 88
