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


class CountingTokenizer:
    """The real tokenizer, recording every text it is asked to encode."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def encode(self, text: str) -> list[int]:
        self.texts.append(text)
        return self._tokenizer.encode(text)


def fewest_drops(turns, tok, *, budget: int):
    """What fitting must return: the fewest oldest turns dropped (latest image turn last), by exact lengths."""
    newest = len(turns) - 1
    pinned = max(i for i in range(newest) if turns[i].images)
    order = [i for i in range(newest) if i != pinned] + [pinned]
    for count in range(len(order) + 1):
        kept = [t for i, t in enumerate(turns) if i not in set(order[:count])]
        if length(kept, tok) <= budget:
            return kept
    raise AssertionError("nothing fits")


def test_each_turn_is_tokenized_at_most_once_and_old_turns_never(loaded):
    tok = loaded.tokenizer
    turns = [T("user", "look", ["img"])]
    for i in range(300):
        turns += [T("assistant", f"answer number {i} about the park"), T("user", f"question {i}? " * (1 + i % 3))]
    budget = 400
    counting = CountingTokenizer(tok)
    kept, prompt = fit_context(turns, counting, num_queries=Q, max_new_tokens=100, context_length=budget + 100)
    assert kept == fewest_drops(turns, tok, budget=budget)
    assert prompt.length == length(kept, tok) <= budget
    final_prompt = build_prompt(kept)
    fitting = [text for text in counting.texts if text not in final_prompt.split("<ImageHere>")]
    assert len(fitting) <= len(kept) + 3  # one count per kept turn, the first that did not fit, the tail
    assert not any("answer number 0 " in text for text in counting.texts)  # far too old to be looked at
    assert sum(len(text) for text in counting.texts) < 3 * len(final_prompt)
