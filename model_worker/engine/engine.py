"""The engine: executes prepare / prefill / decode / release for the scheduler on the loaded model.

Every decode step is one forward for all running sequences, and nothing is computed twice:

- a :class:`~model_worker.engine.batch.DecodeBatch` that all running sequences share (one forward per step);
- an :class:`~model_worker.engine.image_cache.ImageEmbeddingCache`: images are known by the SHA-256 of their
  bytes, encoded once (new ones of one prefill together in one ViT batch) and then referenced by hash;
- a :class:`~model_worker.engine.prefix_cache.PrefixCache`: a finished sequence leaves its KV behind, and a
  later prompt that starts the same way (the next turn of that conversation) prefills only what is new.

Batching never changes an answer: each sequence keeps its own sampler and decodes at its own positions with
its padding masked out. The unbatched reference the tests compare against is ``model/reference.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from model_worker.engine.batch import KV, DecodeBatch, kv_length, library_decoder, prefill_together
from model_worker.engine.decode_step import LeanDecoder
from model_worker.engine.image_cache import ImageEmbeddingCache, image_hash
from model_worker.engine.options import EngineOptions
from model_worker.engine.prefix_cache import Items, PrefixCache
from model_worker.engine.sequence import EngineError, Sequence
from model_worker.model.loader import LoadedModel, load_model
from model_worker.model.preprocess import ImageDecodeError, decode_image, preprocess_images
from model_worker.model.prompt import ContextTooLongError, TokenizedPrompt, fit_question
from model_worker.model.reply import read_reply
from model_worker.model.sampling import Sampler
from model_worker.wire.protocol import CONTEXT_LENGTH, ChatRequest, ErrorCode, FinishReason, ImageRef, Turn

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters since start (read by the metrics collector)."""

    images_encoded: int = 0  # image cache misses: images run through the ViT
    image_batches: int = 0  # ViT forwards (several new images share one)
    image_cache_hits: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_misses: int = 0
    prefix_reused_tokens: int = 0  # prompt positions taken from the prefix cache
    prefilled_tokens: int = 0  # prompt positions computed
    decoded_tokens: int = 0  # rows advanced by decode steps
    decode_steps: int = 0


@dataclass(eq=False)
class SequenceState:
    """Engine-private state of one sequence (``Sequence.state``)."""

    prompt: TokenizedPrompt
    sampler: Sampler
    items: Items = ()  # what fills each prompt position (the prefix cache's key)
    image_keys: list[str] = field(default_factory=list)  # sha256 per image slot, in order
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # held from prepare to prefill
    pending: dict[str, Image.Image] = field(default_factory=dict)  # images still to encode
    kv: KV | None = None  # the sequence's own KV while it is not in the batch
    generated: list[int] = field(default_factory=list)  # every sampled id, EOS excluded
    steps: int = 0
    reused_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _cut_text(turn: Turn, chars: int) -> Turn:
    return turn.model_copy(update={"text": turn.text[:chars]})


def prompt_items(prompt: TokenizedPrompt, image_keys: list[str]) -> Items:
    """What fills each prompt position: token ids, and ``(sha256, query)`` over each image's slot."""
    items: list[object] = []
    for index, segment in enumerate(prompt.segments):
        items.extend(segment)
        if index < prompt.num_images:
            items.extend((image_keys[index], query) for query in range(prompt.num_queries))
    return tuple(items)


class MiniGPT4Engine:
    """Implements :class:`model_worker.engine.sequence.Engine` for the loaded MiniGPT-4."""

    def __init__(self, loaded: LoadedModel, *, options: EngineOptions | None = None,
                 context_length: int = CONTEXT_LENGTH) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.options = options = options or EngineOptions()
        self.max_batch_size = options.max_batch_size
        self.context_length = min(context_length, loaded.llm_config.max_position_embeddings)
        self.images = ImageEmbeddingCache(max_entries=options.image_cache_entries,
                                          max_bytes=options.image_cache_bytes)
        self.prefixes = PrefixCache(max_tokens=options.prefix_cache_tokens)
        self.batch = DecodeBatch(self.model.llm.config, device=self.device)
        self.stats = EngineStats()
        self._decoder = LeanDecoder(self.model.llm) if options.lean_decode else library_decoder(self.model.llm)
        if options.compile_decode:
            self._compile()

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype

    def _compile(self) -> None:
        """Compile each layer's MLP (a pure function of its input, so inference tensors are fine); the first
        requests are slow while it compiles."""
        log.info("compiling the language model's MLPs (dynamic shapes)")
        for layer in self.model.llm.gpt_neox.layers:
            layer.mlp = torch.compile(layer.mlp, dynamic=True)

    # ---- prepare (CPU side) ------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> Sequence:
        """Fit the conversation to the context, resolve its images by hash, tokenize the prompt."""
        turns, prompt, question_cut = self._fit(request)
        if len(turns) < len(request.conversation):
            log.info("request %s: dropped %d oldest turns to fit the context", request.request_id,
                     len(request.conversation) - len(turns))
        if question_cut:
            log.info("request %s: the question alone is too long; reading its first %d characters",
                     request.request_id, len(turns[-1].text))
        state = SequenceState(prompt=prompt, sampler=Sampler.for_params(request.generation, device=self.device))
        self._resolve_images([ref for turn in turns if turn.role == "user" for ref in turn.images], state)
        state.items = prompt_items(prompt, state.image_keys)
        return Sequence(request=request, prompt_tokens=prompt.length, question_cut=question_cut, state=state)

    def _fit(self, request: ChatRequest) -> tuple[list, TokenizedPrompt, bool]:
        """The turns kept within the context budget, their tokenized prompt, and whether the question had to
        be cut (``context_too_long`` when even its images do not fit)."""
        cut = None if request.long_question == "refuse" else _cut_text
        try:
            return fit_question(
                request.conversation, self.tokenizer, num_queries=self.loaded.arch.qformer.num_queries,
                max_new_tokens=request.generation.max_new_tokens, context_length=self.context_length, cut=cut,
            )
        except ContextTooLongError as exc:
            raise EngineError(ErrorCode.CONTEXT_TOO_LONG, str(exc), needed=exc.needed, available=exc.available) from exc

    def _resolve_images(self, refs: list[ImageRef], state: SequenceState) -> None:
        """Fill the state's image keys: cached embeddings are taken now, new images decoded for prefill.

        Raises ``unknown_image`` naming every hash reference whose embedding this worker does not hold."""
        unknown = [ref.sha256 for ref in refs if ref.sha256 is not None and ref.sha256 not in self.images]
        if unknown:
            raise EngineError(ErrorCode.UNKNOWN_IMAGE, "images referenced by hash are not held; resend them",
                              hashes=list(dict.fromkeys(unknown)))
        for index, ref in enumerate(refs):
            key = ref.sha256 or self._decode_new_image(ref, index, state)
            state.image_keys.append(key)
            embedding = self.images.get(key)
            if embedding is not None:
                self.stats.image_cache_hits += 1
                state.embeddings[key] = embedding

    def _decode_new_image(self, ref: ImageRef, index: int, state: SequenceState) -> str:
        try:
            data = ref.decode()
            key = image_hash(data)
            if key not in self.images and key not in state.pending:
                state.pending[key] = decode_image(data)
        except (ValueError, ImageDecodeError) as exc:
            raise EngineError(ErrorCode.BAD_IMAGE, f"image {index + 1} could not be decoded: {exc}") from exc
        return key

    # ---- prefill (device side) ----------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> None:
        """Encode the new images of all ``seqs`` in one ViT batch, then run every prompt past its cached
        prefix in one forward and sample each sequence's first token."""
        started = time.perf_counter()
        self._encode_pending([seq.state for seq in seqs])
        rows = [self._prefill_row(seq.state) for seq in seqs]
        own_kv, logits = prefill_together(self.model.llm, self.model.llm.config, rows)
        elapsed = time.perf_counter() - started
        for seq, kv, row_logits in zip(seqs, own_kv, logits, strict=True):
            seq.state.kv = kv
            seq.state.timings["prefill_s"] = elapsed
            self._advance(seq, row_logits)

    def _encode_pending(self, states: list[SequenceState]) -> None:
        pending: dict[str, Image.Image] = {}
        for state in states:
            pending.update({k: img for k, img in state.pending.items() if self.images.get(k) is None})
        fresh = self._encode(pending) if pending else {}
        for state in states:
            for key in state.pending:
                state.embeddings[key] = fresh.get(key, self.images.get(key))
            state.pending = {}

    def _encode(self, images: dict[str, Image.Image]) -> dict[str, torch.Tensor]:
        """Run new images through the vision tower in one batch and keep them in the image cache."""
        pixels = preprocess_images(list(images.values()), image_size=self.loaded.arch.vision.image_size)
        encoded = dict(zip(images, self.model.encode_images(pixels.to(self.device)), strict=True))
        self.stats.images_encoded += len(images)
        self.stats.image_batches += 1
        for key, embedding in encoded.items():
            self.images.put(key, embedding)
        return encoded

    def _prefill_row(self, state: SequenceState) -> tuple[KV | None, torch.Tensor]:
        """The sequence's cached prefix (if any) and the embeddings of the positions still to compute."""
        length = state.prompt.length
        reused, prefix = self.prefixes.lookup(state.items, limit=length - 1)
        embeds = self._prompt_embeddings(state)[0, reused:]
        state.embeddings = {}  # the images are in the embeddings now
        state.reused_tokens = reused
        self._count_prefill(reused, length - reused)
        return prefix, embeds

    def _prompt_embeddings(self, state: SequenceState) -> torch.Tensor:
        if state.image_keys:
            image_embeds = torch.stack([state.embeddings[key] for key in state.image_keys])
        else:
            image_embeds = torch.empty(0, 0, 0, device=self.device)
        return self.model.embed_prompt(state.prompt, image_embeds)

    def _count_prefill(self, reused: int, computed: int) -> None:
        self.stats.prefilled_tokens += computed
        self.stats.prefix_reused_tokens += reused
        if reused:
            self.stats.prefix_cache_hits += 1
        else:
            self.stats.prefix_cache_misses += 1

    # ---- decode --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> None:
        """Advance every unfinished sequence by one token with one forward for all of them."""
        active = [seq for seq in seqs if not seq.finished]
        for row in [row for row in self.batch.rows if not any(row is seq for seq in active)]:
            row.state.kv = self.batch.leave(row, keep_kv=True)  # not asked to advance: set aside
        joining = [seq for seq in active if seq not in self.batch and seq.state.kv is not None]
        self.batch.join([(seq, seq.state.kv) for seq in joining])
        for seq in joining:
            seq.state.kv = None
        if not self.batch.rows:
            return
        rows = list(self.batch.rows)
        logits = self.batch.step(self._decoder, [row.state.generated[-1] for row in rows])
        self.stats.decode_steps += 1
        self.stats.decoded_tokens += len(rows)
        for row, row_logits in zip(rows, logits, strict=True):
            self._advance(row, row_logits)

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Sample the next token, update the reply text, and end the sequence at EOS, a new turn or its
        length limit."""
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

    # ---- release -------------------------------------------------------------------------------------

    def release(self, seq: Sequence) -> None:
        """Leave the batch; a finished sequence leaves its KV to the prefix cache for the next turn."""
        state = seq.state
        if not isinstance(state, SequenceState):
            return
        kv = self.batch.leave(seq, keep_kv=seq.finished) if seq in self.batch else state.kv
        if kv is not None and seq.finished:
            self._remember(state, kv)
        state.kv = None
        state.embeddings, state.pending = {}, {}

    def _remember(self, state: SequenceState, kv: KV) -> None:
        fed = kv_length(kv) - state.prompt.length  # generated tokens that were fed back (not the last one)
        self.prefixes.store(state.items + tuple(state.generated[:fed]), kv)


def load_engine(weights: Path, *, device: str = "auto", dtype: str = "auto",
                progress: Callable[[str], None] | None = None,
                options: EngineOptions | None = None) -> MiniGPT4Engine:
    """Load the model from a weights directory and wrap it in the engine (with its caches)."""
    loaded = load_model(Path(weights), device=device, dtype=dtype, progress=progress)
    return MiniGPT4Engine(loaded, options=options)
