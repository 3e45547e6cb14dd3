"""The batched engine: every decode step is one forward for all running sequences, and nothing is computed twice.

On top of :class:`~model_worker.engine.MiniGPT4Engine` (prompt fitting, sampling, reply reading) it adds:

- a :class:`~model_worker.batch.DecodeBatch` that all running sequences share (one forward per step);
- an :class:`~model_worker.image_cache.ImageEmbeddingCache`: images are known by the SHA-256 of their bytes,
  encoded once (new ones of one prefill together in one ViT batch) and then referenced by hash;
- a :class:`~model_worker.prefix_cache.PrefixCache`: a finished sequence leaves its KV behind, and a later
  prompt that starts the same way (the next turn of that conversation) prefills only what is new.

Batching never changes an answer: each sequence is prefilled alone, keeps its own sampler, and decodes at
its own positions with its padding masked out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from model_worker.batch import KV, DecodeBatch, kv_length, library_decoder, prefill_together
from model_worker.engine import MiniGPT4Engine, SequenceState
from model_worker.engine_api import EngineError, Sequence
from model_worker.engine_options import EngineOptions
from model_worker.image_cache import ImageEmbeddingCache, image_hash
from model_worker.lean_decode import LeanDecoder
from model_worker.model.loader import LoadedModel
from model_worker.model.preprocess import ImageDecodeError, decode_image, preprocess_images
from model_worker.model.prompt import TokenizedPrompt
from model_worker.model.sampling import Sampler
from model_worker.prefix_cache import Items, PrefixCache
from model_worker.protocol import CONTEXT_LENGTH, ChatRequest, ErrorCode, ImageRef

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
class BatchedState(SequenceState):
    """Per-sequence state: the prompt's position items, its images by hash, and its KV before joining."""

    image_keys: list[str] = field(default_factory=list)  # sha256 per image slot, in order
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # held from prepare to prefill
    pending: dict[str, Image.Image] = field(default_factory=dict)  # images still to encode
    items: Items = ()
    kv: KV | None = None  # the sequence's own KV while it is not in the batch
    reused_tokens: int = 0


def prompt_items(prompt: TokenizedPrompt, image_keys: list[str]) -> Items:
    """What fills each prompt position: token ids, and ``(sha256, query)`` over each image's slot."""
    items: list[object] = []
    for index, segment in enumerate(prompt.segments):
        items.extend(segment)
        if index < prompt.num_images:
            items.extend((image_keys[index], query) for query in range(prompt.num_queries))
    return tuple(items)


class BatchedEngine(MiniGPT4Engine):
    """Implements :class:`model_worker.engine_api.Engine` with batched decode and the two caches."""

    def __init__(self, loaded: LoadedModel, *, max_batch_size: int = 8, context_length: int = CONTEXT_LENGTH,
                 options: EngineOptions | None = None) -> None:
        super().__init__(loaded, max_batch_size=max_batch_size, context_length=context_length)
        self.options = options = options or EngineOptions()
        self.images = ImageEmbeddingCache(max_entries=options.image_cache_entries,
                                          max_bytes=options.image_cache_bytes)
        self.prefixes = PrefixCache(max_tokens=options.prefix_cache_tokens)
        self.batch = DecodeBatch(self.model.llm.config, device=self.device)
        self.stats = EngineStats()
        self._decoder = LeanDecoder(self.model.llm) if options.lean_decode else library_decoder(self.model.llm)
        if options.compile_decode:
            self._compile()

    def _compile(self) -> None:
        """Compile each layer's MLP (a pure function of its input, so inference tensors are fine); the first
        requests are slow while it compiles."""
        log.info("compiling the language model's MLPs (dynamic shapes)")
        for layer in self.model.llm.gpt_neox.layers:
            layer.mlp = torch.compile(layer.mlp, dynamic=True)

    # ---- prepare (CPU side) ------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> Sequence:
        """Fit the conversation to the context, resolve its images by hash, tokenize the prompt."""
        params = request.generation
        turns, prompt = self.fit(request)
        state = BatchedState(prompt=prompt, images=[], sampler=Sampler.for_params(params, device=self.device))
        self._resolve_images([ref for turn in turns if turn.role == "user" for ref in turn.images], state)
        state.items = prompt_items(prompt, state.image_keys)
        return Sequence(request=request, prompt_tokens=prompt.length, state=state)

    def _resolve_images(self, refs: list[ImageRef], state: BatchedState) -> None:
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

    def _decode_new_image(self, ref: ImageRef, index: int, state: BatchedState) -> str:
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

    def _encode_pending(self, states: list[BatchedState]) -> None:
        pending: dict[str, Image.Image] = {}
        for state in states:
            pending.update({k: img for k, img in state.pending.items() if self.images.get(k) is None})
        if pending:
            pixels = preprocess_images(list(pending.values()), image_size=self.loaded.arch.vision.image_size)
            encoded = self.model.encode_images(pixels.to(self.device))
            self.stats.images_encoded += len(pending)
            self.stats.image_batches += 1
            fresh = dict(zip(pending, encoded, strict=True))
            for key, embedding in fresh.items():
                self.images.put(key, embedding)
        else:
            fresh = {}
        for state in states:
            for key in state.pending:
                state.embeddings[key] = fresh.get(key, self.images.get(key))
            state.pending = {}

    def _prefill_row(self, state: BatchedState) -> tuple[KV | None, torch.Tensor]:
        """The sequence's cached prefix (if any) and the embeddings of the positions still to compute."""
        length = state.prompt.length
        reused, prefix = self.prefixes.lookup(state.items, limit=length - 1)
        embeds = self._prompt_embeddings(state)[0, reused:]
        state.embeddings = {}  # the images are in the embeddings now
        state.reused_tokens = reused
        self._count_prefill(reused, length - reused)
        return prefix, embeds

    def _prompt_embeddings(self, state: BatchedState) -> torch.Tensor:
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

    # ---- release -------------------------------------------------------------------------------------

    def release(self, seq: Sequence) -> None:
        """Leave the batch; a finished sequence leaves its KV to the prefix cache for the next turn."""
        state = seq.state
        if not isinstance(state, BatchedState):
            return
        kv = self.batch.leave(seq, keep_kv=seq.finished) if seq in self.batch else state.kv
        if kv is not None and seq.finished:
            self._remember(state, kv)
        state.kv = None
        state.embeddings, state.pending, state.images = {}, {}, []

    def _remember(self, state: BatchedState, kv: KV) -> None:
        fed = kv_length(kv) - state.prompt.length  # generated tokens that were fed back (not the last one)
        self.prefixes.store(state.items + tuple(state.generated[:fed]), kv)
