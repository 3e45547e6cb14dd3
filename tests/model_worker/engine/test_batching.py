"""Batched decode never changes an answer: alone, together, joining late, or next to a cancelled request."""

from __future__ import annotations

import pytest

from model_worker.engine import decode_step
from model_worker.engine.batch import attention_groups, length_groups
from model_worker.engine.engine import MiniGPT4Engine
from model_worker.engine.sequence import Sequence
from model_worker.model.preprocess import decode_image
from model_worker.model.reference import ReferenceTurn, reference_generate
from model_worker.wire.protocol import ChatRequest, GenerationParams, ImageRef, Turn
from tests.support.images import png
from tests.support.requests import one_turn


def request(index: int, *, image: bytes | None = None, **generation: object) -> ChatRequest:
    images = [ImageRef.from_bytes(image)] if image else []
    params = {"greedy": True, "max_new_tokens": 10 + index, **generation}
    return ChatRequest(conversation=[Turn(role="user", text=f"question {index}: what is on the table?",
                                          images=images)],
                       generation=GenerationParams(**params))


def eight_requests() -> list[ChatRequest]:
    return [request(i, image=png((30 * i, 120, 200)) if i % 2 else None) for i in range(8)]


def run_alone(engine: MiniGPT4Engine, req: ChatRequest) -> Sequence:
    seq = engine.prepare(req)
    engine.prefill([seq])
    while not seq.finished:
        engine.decode([seq])
    engine.release(seq)
    return seq


def run_together(engine: MiniGPT4Engine, requests: list[ChatRequest]) -> list[Sequence]:
    seqs = [engine.prepare(req) for req in requests]
    engine.prefill(seqs)
    while not all(seq.finished for seq in seqs):
        engine.decode(seqs)
    return seqs


def test_eight_requests_batched_give_the_tokens_they_give_alone(make_engine):
    requests = eight_requests()
    alone = [run_alone(make_engine(prefix_cache_tokens=0), req) for req in requests]
    engine = make_engine()
    together = run_together(engine, requests)
    for one, batched in zip(alone, together, strict=True):
        assert batched.state.generated == one.state.generated
        assert (batched.text, batched.finish_reason) == (one.text, one.finish_reason)
    # One forward per step for all rows: as many steps as the longest answer needs, not their sum.
    assert engine.stats.decode_steps == max(seq.state.steps for seq in together) - 1
    assert engine.stats.decoded_tokens == sum(seq.state.steps - 1 for seq in together)
    assert engine.stats.image_batches == 1 and engine.stats.images_encoded == 4


@pytest.mark.parametrize("attention", ["fused", "matrix products"])
def test_batched_greedy_tokens_follow_the_cards_reference_loop(make_engine, loaded, attention, monkeypatch):
    if attention == "matrix products":  # what a float32 CPU step uses for caches of a real model's size
        monkeypatch.setattr(decode_step, "MATMUL_ATTENTION_FROM_BYTES", 0)
    requests = eight_requests()[:4]
    together = run_together(make_engine(), requests)
    for req, seq in zip(requests, together, strict=True):
        images = [decode_image(ref.decode()) for ref in req.conversation[0].images]
        turn = ReferenceTurn(role="user", text=req.conversation[0].text, images=images)
        expected = reference_generate(loaded, [turn], max_new_tokens=len(seq.state.generated), greedy=True)
        assert expected[:len(seq.state.generated)] == seq.state.generated


def test_sampling_stays_per_request_in_a_batch(make_engine):
    requests = [request(i, greedy=False, seed=100 + i, temperature=0.7 + 0.2 * i, top_k=20 * (i + 1),
                        top_p=0.9) for i in range(4)]
    alone = [run_alone(make_engine(prefix_cache_tokens=0), req) for req in requests]
    together = run_together(make_engine(), requests)
    assert [s.state.generated for s in together] == [s.state.generated for s in alone]


def test_a_request_joining_and_one_cancelled_mid_batch_do_not_disturb_the_others(make_engine):
    first, second, late, cancelled = (request(i, max_new_tokens=16) for i in (1, 2, 3, 4))
    expected = {r.request_id: run_alone(make_engine(prefix_cache_tokens=0), r).state.generated
                for r in (first, second, late)}
    engine = make_engine()
    running = [engine.prepare(r) for r in (first, second, cancelled)]
    engine.prefill(running)
    for _ in range(3):
        engine.decode(running)
    victim = running.pop()  # cancelled by its client: the scheduler releases it unfinished
    engine.release(victim)
    joiner = engine.prepare(late)
    engine.prefill([joiner])
    running.append(joiner)
    assert len(engine.batch) == 2  # the joiner enters at the next step
    while not all(seq.finished for seq in running):
        engine.decode(running)
    assert {seq.request_id: seq.state.generated for seq in running} == expected
    assert not victim.finished and len(engine.batch) == 0


def test_a_row_not_asked_to_advance_is_set_aside_unchanged(make_engine):
    a, b = request(5, max_new_tokens=12), request(6, max_new_tokens=12)
    expected = [run_alone(make_engine(prefix_cache_tokens=0), r).state.generated for r in (a, b)]
    engine = make_engine()
    seqs = [engine.prepare(r) for r in (a, b)]
    engine.prefill(seqs)
    engine.decode(seqs)
    engine.decode(seqs[1:])  # only b advances; a waits in its slot
    engine.decode(seqs)
    while not all(seq.finished for seq in seqs):
        engine.decode(seqs)
    assert [seq.state.generated for seq in seqs] == expected


def test_the_lean_decode_step_matches_the_librarys_forward(make_engine):
    requests = eight_requests()
    library = run_together(make_engine(lean_decode=False), requests)
    lean = run_together(make_engine(lean_decode=True), requests)
    assert [s.state.generated for s in lean] == [s.state.generated for s in library]


def test_a_long_conversation_next_to_short_ones_gives_everyone_the_tokens_they_give_alone(make_engine):
    long = one_turn("tell me everything about " + "the long history of the sea " * 40, max_new_tokens=12)
    short = [request(i, max_new_tokens=12) for i in range(3)]
    mixed = [short[0], long, short[1], short[2]]  # the long row between short ones: three runs of slots
    alone = [run_alone(make_engine(), req).output_ids for req in mixed]
    engine = make_engine()
    assert engine.prepare(long).prompt_tokens > 4 * engine.prepare(short[0]).prompt_tokens
    assert [seq.output_ids for seq in run_together(engine, mixed)] == alone


def test_attention_groups_split_only_where_it_saves_work():
    assert attention_groups([10, 12, 11, 9]) is None  # alike: one group
    assert attention_groups([10, 900, 12, 11]) == ((0, 1, 11), (1, 2, 901), (2, 4, 13))
    assert attention_groups([700, 900, 800]) is None  # all long: nothing to save


def test_prompts_are_prefilled_in_groups_of_alike_lengths_shortest_first():
    assert length_groups([15, 600, 17, 14, 900]) == [[3, 0, 2], [1, 4]]
    assert length_groups([15, 2000]) == [[0], [1]]
