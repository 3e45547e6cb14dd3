"""The image cache (encode once, refer by hash) and the prefix cache (follow-ups prefill only new tokens)."""

from __future__ import annotations

import hashlib

import pytest

from model_worker.engine.engine import MiniGPT4Engine
from model_worker.engine.sequence import EngineError, Sequence
from model_worker.wire.protocol import ChatRequest, ErrorCode, GenerationParams, ImageRef, Turn
from tests.support.images import png

GREEDY = GenerationParams(greedy=True, max_new_tokens=12)


def ask(engine: MiniGPT4Engine, turns: list[Turn]) -> Sequence:
    seq = engine.prepare(ChatRequest(conversation=turns, generation=GREEDY))
    engine.prefill([seq])
    while not seq.finished:
        engine.decode([seq])
    engine.release(seq)
    return seq


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_image_is_encoded_once_and_then_referenced_by_hash(make_engine):
    engine = make_engine()
    image = png((200, 40, 40))
    first = ask(engine, [Turn(role="user", text="what is this?", images=[ImageRef.from_bytes(image)])])
    assert engine.stats.images_encoded == 1
    by_hash = [Turn(role="user", text="what is this?", images=[ImageRef(sha256=sha(image))])]
    again = ask(engine, by_hash)
    assert engine.stats.images_encoded == 1 and engine.stats.image_cache_hits == 1
    assert again.state.generated == first.state.generated


def test_new_images_of_one_prefill_share_one_vision_batch(make_engine):
    engine = make_engine()
    seqs = [engine.prepare(ChatRequest(conversation=[Turn(role="user", text=f"image {i}", images=[
        ImageRef.from_bytes(png((40 * i, 90, 10))), ImageRef.from_bytes(png((40 * i, 90, 250)))])],
        generation=GREEDY)) for i in range(3)]
    engine.prefill(seqs)
    assert (engine.stats.images_encoded, engine.stats.image_batches) == (6, 1)


def test_an_unknown_hash_is_refused_naming_it(make_engine):
    engine = make_engine()
    missing = sha(b"never sent")
    with pytest.raises(EngineError) as caught:
        engine.prepare(ChatRequest(conversation=[Turn(role="user", images=[ImageRef(sha256=missing)])]))
    assert caught.value.code is ErrorCode.UNKNOWN_IMAGE and caught.value.extra["hashes"] == [missing]


def test_the_image_cache_stays_within_its_bounds(make_engine):
    engine = make_engine(image_cache_entries=2)
    images = [png((10, 60 * i, 30)) for i in range(4)]
    for image in images:
        ask(engine, [Turn(role="user", text="and this?", images=[ImageRef.from_bytes(image)])])
        assert len(engine.images) <= 2
    assert engine.images.bytes == 2 * engine.images.get(sha(images[-1])).numel() * 4
    with pytest.raises(EngineError):  # the oldest was evicted: the client must resend it
        engine.prepare(ChatRequest(conversation=[Turn(role="user", images=[ImageRef(sha256=sha(images[0]))])]))
    small = make_engine(image_cache_mb=1e-6)
    ask(small, [Turn(role="user", text="x", images=[ImageRef.from_bytes(images[0])])])
    assert len(small.images) == 0


def test_a_follow_up_prefills_only_its_new_tokens_and_never_reencodes(make_engine):
    engine = make_engine()
    image = png((20, 200, 90))
    opening = [Turn(role="user", text="what can you see?", images=[ImageRef.from_bytes(image)])]
    first = ask(engine, opening)
    before = dict(vars(engine.stats))
    follow_up = [Turn(role="user", text="what can you see?", images=[ImageRef(sha256=sha(image))]),
                 Turn(role="assistant", text=first.text), Turn(role="user", text="and what colour is it?")]
    second = ask(engine, follow_up)
    reused = engine.stats.prefix_reused_tokens - before["prefix_reused_tokens"]
    computed = engine.stats.prefilled_tokens - before["prefilled_tokens"]
    assert engine.stats.images_encoded == before["images_encoded"]  # the image was not encoded again
    assert engine.stats.prefix_cache_hits == before["prefix_cache_hits"] + 1
    assert reused >= first.prompt_tokens - 1  # the first prompt (its last space may merge with the reply)
    assert reused + computed == second.prompt_tokens
    fresh = ask(make_engine(prefix_cache_tokens=0), [Turn(role="user", text="what can you see?",
                                                          images=[ImageRef.from_bytes(image)]), *follow_up[1:]])
    assert second.state.generated == fresh.state.generated  # reuse does not change the answer


def test_the_prefix_cache_stays_within_its_bound_and_evicts_the_oldest(make_engine):
    engine = make_engine(prefix_cache_tokens=120)
    for i in range(6):
        last = ask(engine, [Turn(role="user", text=f"conversation number {i} about the park")])
        assert engine.prefixes.tokens <= 120
    assert 0 < len(engine.prefixes) < 6
    before = engine.stats.prefix_reused_tokens
    ask(engine, [Turn(role="user", text="conversation number 5 about the park"),
                 Turn(role="assistant", text="a dog"), Turn(role="user", text="more")])
    # The newest entry is still there: its prompt is reused up to the final "システム: ", whose space the
    # tokenizer merges with the reply's first word when the reply is part of the next prompt.
    assert engine.stats.prefix_reused_tokens - before >= last.prompt_tokens - 1


def test_follow_ups_with_different_cached_prefixes_prefill_together_unchanged(make_engine):
    engine, fresh = make_engine(), make_engine(prefix_cache_tokens=0)
    openings = [[Turn(role="user", text=f"tell me about picture {i}", images=[ImageRef.from_bytes(png((9, 70 * i, 99)))])]
                for i in range(3)]
    firsts = [ask(engine, turns) for turns in openings]
    follow_ups = [[*turns, Turn(role="assistant", text=first.text), Turn(role="user", text="why?" * (i + 1))]
                  for i, (turns, first) in enumerate(zip(openings, firsts, strict=True))]
    follow_ups.append([Turn(role="user", text="a brand new question without history")])
    seqs = [engine.prepare(ChatRequest(conversation=turns, generation=GREEDY)) for turns in follow_ups]
    before = engine.stats.prefix_cache_hits
    engine.prefill(seqs)  # three reuse different prefixes, one has none: one forward for all four
    while not all(seq.finished for seq in seqs):
        engine.decode(seqs)
    assert engine.stats.prefix_cache_hits - before >= 3
    assert [s.state.generated for s in seqs] == [ask(fresh, turns).state.generated for turns in follow_ups]
