"""The engine: executes prepare / prefill / decode steps for the scheduler on the loaded model.

Each sequence keeps its own KV cache. Decoding advances the given sequences one after another; the
per-step work is split so that a batched forward (one call for all sequences) can replace
:meth:`MiniGPT4Engine._forward_step` without touching the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import DynamicCache

from model_worker.engine_api import EngineError, Sequence
from model_worker.engine_options import EngineOptions
from model_worker.model.loader import LoadedModel, load_model
from model_worker.model.preprocess import ImageDecodeError, decode_image, preprocess_images
from model_worker.model.prompt import ContextTooLongError, TokenizedPrompt, fit_context
from model_worker.model.reply import read_reply
from model_worker.model.sampling import Sampler
from model_worker.protocol import CONTEXT_LENGTH, ChatRequest, ErrorCode, FinishReason, ImageRef

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SequenceState:
    """Engine-private state of one sequence (``Sequence.state``)."""

    prompt: TokenizedPrompt
    images: list[Image.Image]
    sampler: Sampler
    cache: DynamicCache | None = None
    generated: list[int] = field(default_factory=list)  # every sampled id, EOS excluded
    steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class MiniGPT4Engine:
    """Implements :class:`model_worker.engine_api.Engine` for the loaded MiniGPT-4."""

    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 8, context_length: int = CONTEXT_LENGTH) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_batch_size = max_batch_size
        self.context_length = min(context_length, loaded.llm_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype

    # ---- prepare (CPU side) ------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> Sequence:
        """Fit the conversation to the context, decode the kept images, tokenize the prompt."""
        params = request.generation
        turns, prompt = self.fit(request)
        refs = [ref for turn in turns if turn.role == "user" for ref in turn.images]
        images = self.resolve_images(refs)
        state = SequenceState(prompt=prompt, images=images, sampler=Sampler.for_params(params, device=self.device))
        if len(turns) < len(request.conversation):
            log.info("request %s: dropped %d oldest turns to fit the context", request.request_id,
                     len(request.conversation) - len(turns))
        return Sequence(request=request, prompt_tokens=prompt.length, state=state)

    def fit(self, request: ChatRequest) -> tuple[list, TokenizedPrompt]:
        """The turns kept within the context budget and their tokenized prompt (``context_too_long``
        when the newest turn alone does not fit)."""
        try:
            return fit_context(
                request.conversation, self.tokenizer, num_queries=self.loaded.arch.qformer.num_queries,
                max_new_tokens=request.generation.max_new_tokens, context_length=self.context_length,
            )
        except ContextTooLongError as exc:
            raise EngineError(ErrorCode.CONTEXT_TOO_LONG, str(exc), needed=exc.needed, available=exc.available) from exc

    def resolve_images(self, refs: list[ImageRef]) -> list[Image.Image]:
        """Decoded images for the prompt's image slots, in order (hash references are not held yet)."""
        unknown = [ref.sha256 for ref in refs if ref.sha256 is not None]
        if unknown:
            raise EngineError(ErrorCode.UNKNOWN_IMAGE, "images referenced by hash are not held; resend them",
                              hashes=unknown)
        images = []
        for index, ref in enumerate(refs):
            try:
                images.append(decode_image(ref.decode()))
            except (ValueError, ImageDecodeError) as exc:
                raise EngineError(ErrorCode.BAD_IMAGE, f"image {index + 1} could not be decoded: {exc}") from exc
        return images

    # ---- prefill / decode (device side) -------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> None:
        """Encode each sequence's images, run its prompt into a fresh KV cache, sample its first token."""
        for seq in seqs:
            state: SequenceState = seq.state
            started = time.perf_counter()
            embeds = self.prompt_embeddings(state)
            state.images = []  # the pixels are no longer needed
            cache = DynamicCache(config=self.model.llm.config)
            output = self.model.llm(inputs_embeds=embeds, cache=cache, use_cache=True, logits_to_keep=1)
            state.cache = output.cache
            self._advance(seq, output.logits[0, -1])
            state.timings["prefill_s"] = time.perf_counter() - started

    def prompt_embeddings(self, state: SequenceState) -> torch.Tensor:
        """The prompt's input embeddings [1, L, H] with the images' projected embeddings spliced in."""
        if state.images:
            pixels = preprocess_images(state.images, image_size=self.loaded.arch.vision.image_size)
            image_embeds = self.model.encode_images(pixels.to(self.device))
        else:
            image_embeds = torch.empty(0, 0, 0, device=self.device)
        return self.model.embed_prompt(state.prompt, image_embeds)

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> None:
        """Advance every unfinished sequence by one token."""
        active = [seq for seq in seqs if not seq.finished]
        for seq, logits in zip(active, self._forward_step(active), strict=True):
            self._advance(seq, logits)

    def _forward_step(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        """Next-token logits for each sequence after feeding its last sampled token."""
        logits = []
        for seq in seqs:
            state: SequenceState = seq.state
            last = torch.tensor([[state.generated[-1]]], dtype=torch.long, device=self.device)
            output = self.model.llm(input_ids=last, cache=state.cache, use_cache=True)
            state.cache = output.cache
            logits.append(output.logits[0, -1])
        return logits

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        state: SequenceState = seq.state
        token = state.sampler.choose(logits.float())
        state.steps += 1
        eos = token == self.tokenizer.eos_id
        if not eos:
            state.generated.append(token)
        out_of_room = seq.prompt_tokens + state.steps >= self.context_length
        length = state.steps >= seq.request.generation.max_new_tokens or out_of_room
        reply = read_reply(self.tokenizer, state.generated, final=eos or length)
        if reply.text.startswith(seq.text):
            seq.text = reply.text
        else:  # cannot happen with the hold-back rules; never rewrite what was streamed
            log.warning("request %s: reply text changed under the stream", seq.request_id)
        seq.output_ids = state.generated[: reply.kept_ids]
        if eos or reply.stopped:
            seq.finish_reason = FinishReason.STOP
        elif length:
            seq.finish_reason = FinishReason.LENGTH
        if seq.finished:
            self.release(seq)

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's KV cache and pending images."""
        state = seq.state
        if isinstance(state, SequenceState):
            state.cache = None
            state.images = []


def load_engine(weights: Path, *, device: str = "auto", dtype: str = "auto", max_batch_size: int = 8,
                progress: Callable[[str], None] | None = None, options: EngineOptions | None = None) -> MiniGPT4Engine:
    """Load the model from a weights directory and wrap it in the batched engine (with its caches)."""
    from model_worker.batched_engine import BatchedEngine  # it builds on this module

    loaded = load_model(Path(weights), device=device, dtype=dtype, progress=progress)
    return BatchedEngine(loaded, max_batch_size=max_batch_size, options=options or EngineOptions())
