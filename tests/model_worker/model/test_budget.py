"""The context budget: oldest whole turns go first, the latest image turn stays while it fits."""

from __future__ import annotations

import pytest

from model_worker.model.prompt import (
    ContextTooLongError,
    build_prompt,
    fit_context,
    fit_question,
    tokenize_prompt,
)
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


def test_a_question_too_long_on_its_own_is_cut_to_the_longest_start_that_fits(loaded):
    tokenizer = loaded.tokenizer
    turns = [T("user", "old question"), T("assistant", "old answer"), T("user", "word " * 400)]
    cut = lambda turn, chars: T(turn.role, turn.text[:chars])  # noqa: E731
    kept, prompt, was_cut = fit_question(turns, tokenizer, num_queries=4, max_new_tokens=100,
                                         context_length=300, cut=cut)
    assert was_cut and len(kept) == 1 and turns[-1].text.startswith(kept[0].text)
    assert prompt.length + 100 <= 300
    one_more = [T("user", turns[-1].text[:len(kept[0].text) + 1])]
    with pytest.raises(ContextTooLongError):  # the longest start that fits: one more character does not
        fit_context(one_more, tokenizer, num_queries=4, max_new_tokens=100, context_length=300)
    with pytest.raises(ContextTooLongError):
        fit_question(turns, tokenizer, num_queries=4, max_new_tokens=100, context_length=300, cut=None)
