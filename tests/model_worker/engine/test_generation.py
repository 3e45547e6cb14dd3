"""Generation through the engine: reproducibility, equivalence with the reference loop, streamed text."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from model_worker.engine.engine import MiniGPT4Engine
from model_worker.engine.sequence import EngineError
from model_worker.model.reference import ReferenceTurn, reference_generate
from model_worker.model.reply import read_reply, stable_text
from model_worker.wire.protocol import ChatRequest, ErrorCode, FinishReason, GenerationParams, ImageRef, Turn


def png(color: tuple[int, int, int], size=(320, 240)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.paste((255 - color[0], color[1], 90), (20, 30, 150, 120))
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def engine(loaded) -> MiniGPT4Engine:
    return MiniGPT4Engine(loaded)


def run(engine: MiniGPT4Engine, request: ChatRequest) -> tuple[object, list[str]]:
    seq = engine.prepare(request)
    engine.prefill([seq])
    texts = [seq.text]
    while not seq.finished:
        engine.decode([seq])
        texts.append(seq.text)
    engine.release(seq)
    return seq, texts


def request(text="What can you see?", images=(), **generation) -> ChatRequest:
    turn = Turn(role="user", text=text, images=[ImageRef.from_bytes(b) for b in images])
    return ChatRequest(conversation=[turn], generation=GenerationParams(**generation))


def test_greedy_is_reproducible_and_equals_the_reference_loop(engine, loaded):
    image = png((200, 30, 40))
    first, _ = run(engine, request(images=[image], greedy=True, max_new_tokens=24))
    second, _ = run(engine, request(images=[image], greedy=True, max_new_tokens=24))
    assert first.output_ids == second.output_ids and first.text == second.text
    reference = reference_generate(
        loaded, [ReferenceTurn("user", "What can you see?", [Image.open(io.BytesIO(image)).convert("RGB")])],
        greedy=True, max_new_tokens=24)
    eos = loaded.tokenizer.eos_id
    assert [i for i in reference if i != eos][: len(first.state.generated)] == first.state.generated


def test_the_image_changes_the_next_token_distribution(engine):
    logits = []
    for color in ((200, 30, 40), (10, 40, 220)):
        state = engine.prepare(request(images=[png(color)], greedy=True)).state
        with torch.inference_mode():
            engine._encode_pending([state])
            logits.append(engine.model.llm(inputs_embeds=engine._prompt_embeddings(state)).logits[0, -1])
    probs = [torch.softmax(x, dim=-1) for x in logits]
    assert (probs[0] - probs[1]).abs().sum() > 0.05  # total variation well above float noise


def test_seeded_sampling_is_reproducible_and_streams_append_only(engine):
    runs = [run(engine, request(seed=1234, max_new_tokens=40)) for _ in range(2)]
    (a, texts_a), (b, _) = runs
    assert a.output_ids == b.output_ids and a.text == b.text
    for before, after in zip(texts_a, texts_a[1:], strict=False):
        assert after.startswith(before)
    other, _ = run(engine, request(seed=99, max_new_tokens=40))
    assert other.state.generated != a.state.generated
    assert a.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    if a.finish_reason == FinishReason.LENGTH:
        assert a.state.steps == 40


def test_stop_at_new_turn_cuts_the_marker(loaded):
    tok = loaded.tokenizer
    reply_ids = tok.encode(" 横になっています。")
    ids = reply_ids + tok.encode("\nユーザー: もう一度")
    state = read_reply(tok, ids, final=False)
    assert state.stopped and state.text == "横になっています。"
    assert ids[: state.kept_ids] == reply_ids
    running = read_reply(tok, reply_ids + tok.encode("\nユー"), final=False)
    assert not running.stopped and running.text == "横になっています。"


def test_stable_text_holds_back_what_may_change():
    assert stable_text("  hello \n") == "hello"
    assert stable_text("hello\nシス") == "hello"
    assert stable_text("hello\nok") == "hello\nok"
    assert stable_text("abc\ufffd") == "abc"


def test_bad_and_unknown_images_are_refused(engine):
    with pytest.raises(EngineError) as info:
        engine.prepare(request(images=[b"not an image at all"]))
    assert info.value.code == ErrorCode.BAD_IMAGE
    turn = Turn(role="user", text="x", images=[ImageRef(sha256="ab" * 32)])
    with pytest.raises(EngineError) as info:
        engine.prepare(ChatRequest(conversation=[turn]))
    assert info.value.code == ErrorCode.UNKNOWN_IMAGE and info.value.extra["hashes"] == ["ab" * 32]


def test_a_question_too_long_for_the_context_is_cut_or_refused(engine):
    question = request(text="word " * 1200, max_new_tokens=1000)
    seq = engine.prepare(question)
    assert seq.question_cut and seq.prompt_tokens + 1000 <= engine.context_length
    with pytest.raises(EngineError) as info:
        engine.prepare(question.model_copy(update={"long_question": "refuse"}))
    assert info.value.code == ErrorCode.CONTEXT_TOO_LONG


@pytest.mark.parametrize("params", [
    {"seed": 7},  # the card's settings: temperature 1.0, top_p 0.85, top_k 50
    {"seed": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 20},
    {"seed": 9, "temperature": 1.3, "top_k": 0, "top_p": 1.0},
])
def test_seeded_sampling_equals_the_libraries_generate(engine, loaded, params):
    """Same seed, same draws: the engine's warpers and sampling match transformers' ``generate``."""
    image = png((10, 200, 30))
    seq, texts = run(engine, request(text="hi", images=[image], max_new_tokens=30, **params))
    options = {k: v for k, v in params.items() if k != "seed"}
    reference = reference_generate(loaded, [ReferenceTurn("user", "hi", [Image.open(io.BytesIO(image)).convert("RGB")])],
                                   max_new_tokens=30, seed=params["seed"], **options)
    eos = loaded.tokenizer.eos_id
    assert seq.state.generated == [i for i in reference if i != eos][: len(seq.state.generated)]
    assert texts[-1] == seq.text


def forced(engine: MiniGPT4Engine, token: int) -> torch.Tensor:
    logits = torch.full((engine.tokenizer.vocab_size,), -10.0)
    logits[token] = 10.0
    return logits


def test_engine_stops_at_a_new_turn_and_cuts_it(engine):
    """Feed the engine's step logic logits that spell a reply and then a new user turn."""
    tok = engine.tokenizer
    reply, marker = tok.encode(" 横になっています。"), tok.encode("\nユーザー: 次")
    seq = engine.prepare(request(greedy=True, max_new_tokens=50))
    shown = []
    for token in reply + marker:
        engine._advance(seq, forced(engine, token))
        shown.append(seq.text)
        if seq.finished:
            break
    assert seq.finish_reason == FinishReason.STOP
    assert seq.text == "横になっています。" and seq.output_ids == reply
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:], strict=False))
    assert len(seq.state.generated) < len(reply + marker)  # stopped as soon as the marker was complete


def test_engine_eos_and_length(engine):
    tok = engine.tokenizer
    seq = engine.prepare(request(greedy=True, max_new_tokens=50))
    for token in tok.encode("ok "):
        engine._advance(seq, forced(engine, token))
    engine._advance(seq, forced(engine, tok.eos_id))
    assert seq.finish_reason == FinishReason.STOP and seq.text == "ok" and tok.eos_id not in seq.output_ids
    seq = engine.prepare(request(greedy=True, max_new_tokens=2))
    for token in tok.encode("ab"):
        engine._advance(seq, forced(engine, token))
    assert seq.finish_reason == FinishReason.LENGTH and seq.text == "ab"
