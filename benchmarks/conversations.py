"""The benchmark's conversations: each opens with its own image and asks a question per turn, greedy."""

from __future__ import annotations

import io

from PIL import Image

from model_worker.wire.protocol import ChatRequest, ImageRef, Turn

QUESTIONS = ("What can you see in this picture?", "What colour is the biggest thing?", "Is it daytime?",
             "How many people are there?", "Describe it in Japanese.", "What happens next?")


def conversation_image(index: int) -> bytes:
    """A distinct 320x240 PNG per conversation."""
    image = Image.new("RGB", (320, 240), ((37 * index) % 256, 120, (200 - 23 * index) % 256))
    image.paste(((90 + 51 * index) % 256, 30, 160), (20 + index % 50, 30, 180, 150))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def next_request(index: int, image: bytes, history: list[Turn], turn: int, max_new_tokens: int) -> ChatRequest:
    """Conversation ``index``'s request for ``turn`` after ``history`` (the image goes with the first turn)."""
    images = [ImageRef.from_bytes(image)] if turn == 0 else []
    question = Turn(role="user", text=f"{QUESTIONS[turn % len(QUESTIONS)]} ({index})", images=images)
    return ChatRequest(user=f"user-{index}", conversation=[*history, question],
                       generation={"greedy": True, "max_new_tokens": max_new_tokens})
