"""Next-token choice per request, as transformers' ``generate`` does it (the card's settings by default).

Sampling applies temperature, then top-k, then top-p with the library's own logits warpers, and draws
from the softmax with the request's own ``torch.Generator`` (seeded from the request's seed), so one
request's randomness never depends on another's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch
from transformers.generation import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model_worker.wire.protocol import GenerationParams


@dataclass
class Sampler:
    greedy: bool
    warpers: LogitsProcessorList
    generator: torch.Generator | None
    seed: int | None

    @classmethod
    def for_params(cls, params: GenerationParams, *, device: torch.device) -> Sampler:
        """A sampler for a request; a missing seed is drawn at random (and kept, for logging)."""
        if params.greedy:
            return cls(greedy=True, warpers=LogitsProcessorList(), generator=None, seed=params.seed)
        warpers = LogitsProcessorList()
        if params.temperature != 1.0:  # the library skips a neutral temperature too
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            warpers.append(TopKLogitsWarper(top_k=params.top_k, min_tokens_to_keep=1))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p, min_tokens_to_keep=1))
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device=device).manual_seed(seed)
        return cls(greedy=False, warpers=warpers, generator=generator, seed=seed)

    def choose(self, logits: torch.Tensor, input_ids: torch.Tensor | None = None) -> int:
        """The next token id from one sequence's float32 logits [vocab]."""
        if self.greedy:
            return int(torch.argmax(logits).item())
        scores = self.warpers(input_ids if input_ids is not None else torch.empty(1, 0, dtype=torch.long),
                              logits.unsqueeze(0))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator).item())
