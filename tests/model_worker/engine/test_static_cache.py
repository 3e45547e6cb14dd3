"""The static KV cache: written in place, rows join and leave without touching the others, growth keeps every
row, and answers stay those of a sequence alone and of the card's reference loop."""

from __future__ import annotations

import pytest
import torch

from model_worker.engine.batch import DecodeBatch
from model_worker.engine.cuda_graphs import GraphedDecoder
from model_worker.engine.decode_step import LeanDecoder
from model_worker.engine.kv_cache import POSITION_CHUNK, StaticKVCache, slot_bucket
from model_worker.engine.sequence import EngineError, Sequence
from model_worker.model.reference import ReferenceTurn, reference_generate
from model_worker.wire.protocol import ChatRequest, Turn
from tests.model_worker.engine.test_batching import request, run_alone


def small_cache(**bounds: int) -> StaticKVCache:
    return StaticKVCache(layers=2, heads=2, head_dim=4, max_slots=bounds.get("max_slots", 8),
                         max_positions=bounds.get("max_positions", 1000), dtype=torch.float32,
                         device=torch.device("cpu"))


def own_kv(length: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 2, length, 4, generator=generator), torch.randn(1, 2, length, 4, generator=generator))
            for _ in range(2)]


def test_the_cache_grows_in_chunks_and_buckets_keeping_its_content_and_stays_bounded():
    cache = small_cache(max_slots=6, max_positions=600)
    cache.reserve(1, 10)
    assert (cache.slots, cache.positions, cache.generation) == (1, POSITION_CHUNK, 1)
    kv = own_kv(10, seed=1)
    cache.load(0, kv)
    cache.reserve(3, POSITION_CHUNK + 1)  # both dimensions grow: slots to a bucket, positions to a chunk
    assert (cache.slots, cache.positions, cache.generation) == (4, 2 * POSITION_CHUNK, 2)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(cache.read(0, 10), kv, strict=True))
    cache.reserve(2, 5)  # within what is held: nothing moves
    assert cache.generation == 2
    cache.reserve(6, 600)  # the bounds themselves, not the next bucket or chunk beyond them
    assert (cache.slots, cache.positions) == (6, 600)
    with pytest.raises(ValueError):
        cache.reserve(7, 10)
    with pytest.raises(ValueError):
        cache.reserve(1, 601)
    assert [slot_bucket(n, 6) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]


def test_joining_and_leaving_touch_no_other_row_and_steps_write_in_place(loaded):
    llm = loaded.model.llm
    config = llm.config
    cache = StaticKVCache(layers=config.num_hidden_layers, heads=config.num_attention_heads,
                          head_dim=config.hidden_size // config.num_attention_heads, max_slots=4,
                          max_positions=2048, dtype=torch.float32, device=torch.device("cpu"))
    batch, decoder = DecodeBatch(cache), LeanDecoder(llm)
    first, second, third = (Sequence(request=ChatRequest(conversation=[Turn(role="user", text=str(i))]))
                            for i in range(3))
    batch.join([(first, _random_kv(cache, 7, 1)), (second, _random_kv(cache, 12, 2))])
    tensors = [t.data_ptr() for t in (*cache.keys, *cache.values)]
    first_kv, second_kv = cache.read(0, 7), cache.read(1, 12)
    batch.step(decoder, [second], [5])  # the first row is held: its slot runs as a throw-away row
    assert _same(cache.read(0, 7), first_kv)
    batch.step(decoder, [first], [6])  # now only the first advances; the second is past the rows run
    batch.leave(first)
    batch.join([(third, _random_kv(cache, 3, 3))])
    batch.step(decoder, [second, third], [7, 8])
    assert [t.data_ptr() for t in (*cache.keys, *cache.values)] == tensors  # no step or join reallocated
    assert _same([(k[:, :, :12], v[:, :, :12]) for k, v in cache.read(1, 14)], second_kv)
    assert (batch.length(second), batch.length(third), len(batch)) == (14, 4, 2)
    assert batch.rows == [third, second]  # the third took the lowest free slot; nobody moved


def _same(a, b) -> bool:
    return all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(a, b, strict=True))


def _random_kv(cache: StaticKVCache, length: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    shape = (1, cache.heads, length, cache.head_dim)
    return [(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
            for _ in range(cache.layers)]


def test_rows_joining_leaving_and_reusing_slots_give_the_tokens_they_give_alone(make_engine):
    """A slot freed by a finished row is reused by a newcomer with a shorter prompt: the stale columns beyond
    its length must stay invisible to it."""
    long_one = request(0, max_new_tokens=6)
    long_one = long_one.model_copy(update={"conversation": [Turn(role="user", text="tell me everything " * 12)]})
    others = [request(i, max_new_tokens=14) for i in (1, 2, 3)]
    expected = {r.request_id: run_alone(make_engine(prefix_cache_tokens=0), r).state.generated
                for r in (long_one, *others)}
    engine = make_engine(max_batch_size=2)
    running = [engine.prepare(r) for r in (long_one, others[0])]
    engine.prefill(running)
    waiting = [engine.prepare(r) for r in others[1:]]
    finished = []
    while running or waiting:
        engine.decode(running)
        finished += [seq for seq in running if seq.finished]
        running = [seq for seq in running if not seq.finished]
        while waiting and len(running) < 2:  # a newcomer takes the freed slot at once
            joiner = waiting.pop(0)
            engine.prefill([joiner])
            running.append(joiner)
    assert {seq.request_id: seq.state.generated for seq in finished} == expected
    assert len(engine.batch) == 0 and engine.kv_cache.slots == 2


def test_a_long_context_past_chunk_boundaries_matches_the_reference(make_engine, loaded):
    """The cache grows (twice its positions) while two rows decode: both keep their keys and values, and
    greedy tokens stay the card's."""
    words = "the dog is running in the park and a red bus " * 40
    long_request = ChatRequest(conversation=[Turn(role="user", text=words)],
                               generation={"greedy": True, "max_new_tokens": 70})
    short_request = request(4, max_new_tokens=70)
    engine = make_engine()
    seqs = [engine.prepare(r) for r in (long_request, short_request)]
    engine.prefill(seqs)
    engine.decode(seqs)
    joined, allocated = engine.kv_cache.generation, engine.kv_cache.positions
    assert seqs[0].prompt_tokens < allocated < seqs[0].prompt_tokens + 70  # the answer outgrows it
    while not all(seq.finished for seq in seqs):
        engine.decode(seqs)
    assert engine.kv_cache.positions == 2 * allocated and engine.kv_cache.generation == joined + 1
    for req, seq in zip((long_request, short_request), seqs, strict=True):
        turn = ReferenceTurn(role="user", text=req.conversation[0].text)
        reference = reference_generate(loaded, [turn], max_new_tokens=len(seq.state.generated), greedy=True)
        assert reference[:len(seq.state.generated)] == seq.state.generated


def test_the_kv_positions_option_caps_the_context_and_the_cache(make_engine):
    engine = make_engine(kv_cache_positions=300)
    assert engine.context_length == 300 and engine.kv_cache.max_positions == 300
    prompt = engine.prepare(request(1, max_new_tokens=1)).prompt_tokens
    too_long = request(1, max_new_tokens=301 - prompt).model_copy(update={"long_question": "refuse"})
    with pytest.raises(EngineError):  # one position more than the cache holds
        engine.prepare(too_long)
    seq = engine.prepare(request(1, max_new_tokens=300 - prompt))
    engine.prefill([seq])
    while not seq.finished:
        engine.decode([seq])
    assert seq.prompt_tokens + seq.state.steps <= 300 and engine.kv_cache.positions <= 300


class PaddedLean(LeanDecoder):
    """The lean step run at the shapes a CUDA graph would use (rows and width rounded up to buckets)."""

    def __init__(self, llm, max_slots: int) -> None:
        super().__init__(llm)
        self.graphed = GraphedDecoder(LeanDecoder(llm), max_slots=max_slots, max_positions=2048)

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        return self.graphed.shape_for(rows, width)


def test_steps_padded_to_graph_buckets_give_the_same_tokens(make_engine, loaded):
    """Extra rows (free slots) and masked extra columns, as a captured CUDA graph runs them, change nothing."""
    requests = [request(i, max_new_tokens=12 + 3 * i) for i in range(5)]
    plain = make_engine()
    padded = make_engine()
    padded._decoder = PaddedLean(loaded.model.llm, max_slots=8)
    for engine in (plain, padded):
        seqs = [engine.prepare(r) for r in requests]
        engine.prefill(seqs)
        while not all(seq.finished for seq in seqs):
            engine.decode(seqs)
        engine.outcome = [seq.state.generated for seq in seqs]
    assert padded.outcome == plain.outcome
    assert padded.kv_cache.slots == 8  # five rows ran as a bucket of eight


def test_graphs_fall_back_to_the_eager_step_where_capture_is_impossible(make_engine, loaded, caplog):
    """On a CPU there is nothing to capture: the first step logs why and every step runs eagerly."""
    requests = [request(i, max_new_tokens=10) for i in range(3)]
    expected = [run_alone(make_engine(prefix_cache_tokens=0), r).state.generated for r in requests]
    engine = make_engine()
    engine._decoder = graphed = GraphedDecoder(LeanDecoder(loaded.model.llm), max_slots=8, max_positions=2048)
    seqs = [engine.prepare(r) for r in requests]
    engine.prefill(seqs)
    while not all(seq.finished for seq in seqs):
        engine.decode(seqs)
    assert [seq.state.generated for seq in seqs] == expected
    assert not graphed.enabled and graphed.captures == 0
    assert "could not capture a decode step as a CUDA graph" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_steps_match_the_eager_steps(tiny_weights):
    from model_worker.engine.engine import MiniGPT4Engine
    from model_worker.engine.options import EngineOptions
    from model_worker.model.loader import load_model

    cuda = load_model(tiny_weights, device="cuda", dtype="float32")
    requests = [request(i, max_new_tokens=20 + 7 * i) for i in range(5)]
    outcome = []
    for graphs in (False, True):
        engine = MiniGPT4Engine(cuda, options=EngineOptions(cuda_graphs=graphs))
        seqs = [engine.prepare(r) for r in requests]
        engine.prefill(seqs)
        while not all(seq.finished for seq in seqs):
            engine.decode(seqs)
        outcome.append([seq.state.generated for seq in seqs])
        if graphs:
            assert isinstance(engine._decoder, GraphedDecoder) and engine._decoder.enabled
            assert engine._decoder.captures > 0
    assert outcome[0] == outcome[1]
