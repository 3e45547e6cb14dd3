"""Stop texts end an answer where they appear, however the streamed text is split into pieces."""

from __future__ import annotations

import random

import pytest

from model_worker.serve.stop_texts import StopTextCutter


def run(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    cutter = StopTextCutter(stops)
    sent = [cutter.feed(piece) for piece in pieces] + [cutter.flush()]
    return sent, cutter.hit


def test_a_stop_text_split_over_pieces_is_never_sent():
    sent, hit = run(["Hello wor", "ld. ", "The E", "N", "D is near"], ["END"])
    assert hit and "".join(sent) == "Hello world. The "
    assert "E" not in "".join(sent[:3])  # "E" was held back until "N" and "D" showed it was the stop


def test_held_text_that_turns_out_not_to_be_a_stop_is_sent_with_the_next_piece():
    sent, hit = run(["say EN", "OUGH", "!"], ["END"])
    assert not hit and sent == ["say ", "ENOUGH", "!", ""]


def test_the_earliest_of_several_stops_wins():
    sent, hit = run(["one two three"], ["three", "two"])
    assert hit and "".join(sent) == "one "


def test_what_is_held_at_the_end_is_flushed():
    sent, hit = run(["abc", "E"], ["END"])
    assert not hit and sent == ["abc", "", "E"]


def test_nothing_after_the_stop_is_sent():
    cutter = StopTextCutter(["\n"])
    assert cutter.feed("line one\nline two") == "line one"
    assert cutter.feed("more") == "" and cutter.flush() == ""


def test_without_stops_every_piece_passes_at_once():
    assert run(["a", "b"], [])[0] == ["a", "b", ""]


@pytest.mark.parametrize("seed", range(20))
def test_any_split_gives_the_text_up_to_the_first_stop(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("abcAB ") for _ in range(60))
    stops = ["".join(rng.choice("abcAB ") for _ in range(rng.randint(1, 4))) for _ in range(2)]
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    expected = text[:min(found)] if found else text
    sent, hit = run(pieces, stops)
    assert "".join(sent) == expected and hit == bool(found)
