"""The plain single-request reference loop, shaped like the card's script.

Preprocess each image, encode it, build the prompt embeddings, and let transformers' ``generate`` run on
``inputs_embeds`` with the card's settings. No batching, no streaming, no KV-cache handling of our own:
the engine and the benchmarks are compared against this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from model_worker.model.loader import LoadedModel
from model_worker.model.preprocess import preprocess_image
from model_worker.model.prompt import build_prompt, tokenize_prompt


@dataclass(frozen=True)
class ReferenceTurn:
    role: str  # "user" or "assistant"
    text: str
    images: Sequence[Image.Image] = ()


@torch.inference_mode()
def reference_generate(
    loaded: LoadedModel,
    conversation: Sequence[ReferenceTurn],
    *,
    max_new_tokens: int = 512,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 0.85,
    top_k: int = 50,
    seed: int | None = None,
) -> list[int]:
    """Generated ids (EOS included when reached) for a conversation, as the card computes them."""
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = tokenize_prompt(build_prompt(conversation), tokenizer, num_queries=loaded.arch.qformer.num_queries)
    images = [img for turn in conversation if turn.role == "user" for img in turn.images]
    image_size = loaded.arch.vision.image_size
    embeds = [model.encode_images(preprocess_image(img, image_size=image_size).unsqueeze(0).to(model.device))
              for img in images]
    stacked = torch.cat(embeds) if embeds else torch.empty(0, 0, 0, device=model.device)
    inputs_embeds = model.embed_prompt(prompt, stacked)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {"do_sample": False} if greedy else {
        "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    output = model.llm.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=model.device),
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
        **sampling,
    )
    return output[0].tolist()
