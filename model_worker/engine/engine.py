"""The engine: executes prepare / prefill / decode / release for the scheduler on the loaded model.

Every decode step is one forward for all running sequences, and nothing is computed twice:

- a :class:`~model_worker.engine.batch.DecodeBatch` that all running sequences share (one forward per step),
  each in its own slot of a preallocated :class:`~model_worker.engine.kv_cache.StaticKVCache` written in
  place; on CUDA the step is replayed as a CUDA graph (:mod:`model_worker.engine.cuda_graphs`);
- an :class:`~model_worker.engine.image_cache.ImageEmbeddingCache`: images are known by the SHA-256 of their
  bytes, encoded once (new ones of one prefill together in one ViT batch) and then referenced by hash;
- a :class:`~model_worker.engine.prefix_cache.PrefixCache`: a finished sequence leaves its KV behind, and a
  later prompt that starts the same way (the next turn of that conversation) prefills only what is new.

Batching never changes an answer: each sequence keeps its own sampler and decodes at its own positions with
the other columns masked out. The unbatched reference the tests compare against is ``model/reference.py``.

Threads: :meth:`MiniGPT4Engine.prepare` (tokenizing, fitting the context, decoding and preprocessing new
images) may run on other threads, several at once, while the engine thread runs prefill, decode and
release: it only reads the tokenizer and the options, looks embeddings up in the image cache (which is
locked) and writes nothing but the new sequence. Everything else runs on the one engine thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model_worker.engine.batch import DecodeBatch, Decoder, length_groups
from model_worker.engine.decode_step import LeanDecoder, LibraryDecoder
from model_worker.engine.image_cache import ImageEmbeddingCache, image_hash
from model_worker.engine.kv_cache import KV, StaticKVCache, kv_length
from model_worker.engine.options import EngineOptions
from model_worker.engine.prefill import prefill_together
from model_worker.engine.prefix_cache import Items, PrefixCache
from model_worker.engine.sequence import EngineError, Sequence
from model_worker.model.loader import LoadedModel, load_model
from model_worker.model.placement import release_freed_memory
from model_worker.model.preprocess import ImageDecodeError, decode_image, preprocess_image
from model_worker.model.prompt import ContextTooLongError, TokenizedPrompt, fit_question
from model_worker.model.reply import ReplyReader
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
    reader: ReplyReader  # the reply text so far, decoded incrementally
    items: Items = ()  # what fills each prompt position (the prefix cache's key)
    image_keys: list[str] = field(default_factory=list)  # sha256 per image slot, in order
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # held from prepare to prefill
    pending: dict[str, torch.Tensor] = field(default_factory=dict)  # preprocessed pixels still to encode
    cached_images: int = 0  # image slots whose embedding prepare found in the cache
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
        self.context_length = min(context_length, loaded.llm_config.max_position_embeddings,
                                  options.kv_cache_positions or context_length)
        self.images = ImageEmbeddingCache(max_entries=options.image_cache_entries,
                                          max_bytes=options.image_cache_bytes)
        self.prefixes = PrefixCache(max_tokens=options.prefix_cache_tokens)
        self.kv_cache = self._make_kv_cache()
        self.batch = DecodeBatch(self.kv_cache)
        self.stats = EngineStats()
        if options.compile_decode:
            self._compile()
        self._decoder = self._make_decoder()

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype

    def _make_kv_cache(self) -> StaticKVCache:
        config = self.loaded.llm_config
        return StaticKVCache(layers=config.num_hidden_layers, heads=config.num_attention_heads,
                             head_dim=config.hidden_size // config.num_attention_heads,
                             max_slots=self.max_batch_size, max_positions=self.context_length,
                             dtype=self.model.llm_dtype, device=self.device)

    def _make_decoder(self) -> Decoder:
        """The lean step; captured in CUDA graphs on a CUDA device unless told not to; the library's
        forward when ``lean_decode`` is off."""
        if not self.options.lean_decode:
            return LibraryDecoder(self.model.llm)
        lean = LeanDecoder(self.model.llm)
        if self.device.type != "cuda" or not self.options.cuda_graphs:
            return lean
        from model_worker.engine.cuda_graphs import GraphedDecoder

        log.info("decode steps are captured as CUDA graphs (per batch-size and context-length bucket)")
        return GraphedDecoder(lean, max_slots=self.max_batch_size, max_positions=self.context_length)

    def _compile(self) -> None:
        """Compile each layer's MLP (a pure function of its input, so inference tensors are fine); the first
        requests are slow while it compiles."""
        log.info("compiling the language model's MLPs (dynamic shapes)")
        for layer in self.model.llm.gpt_neox.layers:
            layer.mlp = torch.compile(layer.mlp, dynamic=True)

    # ---- prepare (CPU side) ------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> Sequence:
        """Fit the conversation to the context, tokenize the prompt, resolve its images by hash, decode and
        preprocess new ones. Safe on a thread of its own while the engine thread steps (see the module
        docstring)."""
        turns, prompt, question_cut = self._fit(request)
        if len(turns) < len(request.conversation):
            log.info("request %s: dropped %d oldest turns to fit the context", request.request_id,
                     len(request.conversation) - len(turns))
        if question_cut:
            log.info("request %s: the question alone is too long; reading its first %d characters",
                     request.request_id, len(turns[-1].text))
        state = SequenceState(prompt=prompt, sampler=Sampler.for_params(request.generation, device=self.device),
                              reader=ReplyReader(self.tokenizer))
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
                state.embeddings[key] = embedding
                state.cached_images += 1  # counted into the stats by prefill, on the engine thread

    def _decode_new_image(self, ref: ImageRef, index: int, state: SequenceState) -> str:
        try:
            data = ref.decode()
            key = image_hash(data)
            if key not in self.images and key not in state.pending:
                state.pending[key] = preprocess_image(decode_image(data),
                                                      image_size=self.loaded.arch.vision.image_size)
        except (ValueError, ImageDecodeError) as exc:
            raise EngineError(ErrorCode.BAD_IMAGE, f"image {index + 1} could not be decoded: {exc}") from exc
        return key

    # ---- prefill (device side) ----------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> None:
        """Encode the new images of all ``seqs`` in one ViT batch, then run the prompts past their cached
        prefixes (one forward per group of alike lengths, so a long prompt is not padded against short ones)
        and sample each sequence's first token."""
        started = time.perf_counter()
        self._encode_pending([seq.state for seq in seqs])
        rows = [self._prefill_row(seq.state) for seq in seqs]
        logits: list[torch.Tensor | None] = [None] * len(seqs)
        for group in length_groups([kv_length(kv or []) + embeds.shape[0] for kv, embeds in rows]):
            own_kv, group_logits = prefill_together(self.model.llm, self.model.llm.config, [rows[i] for i in group])
            for index, kv, row_logits in zip(group, own_kv, group_logits, strict=True):
                seqs[index].state.kv, logits[index] = kv, row_logits
        elapsed = time.perf_counter() - started
        for seq in seqs:
            seq.state.timings["prefill_s"] = elapsed
        self._advance_all(seqs, torch.stack(logits))
        release_freed_memory()  # the ViT's and the forward's temporaries, before the rows join the batch

    def _encode_pending(self, states: list[SequenceState]) -> None:
        pending: dict[str, torch.Tensor] = {}
        for state in states:
            pending.update({k: img for k, img in state.pending.items() if self.images.get(k) is None})
        fresh = self._encode(pending) if pending else {}
        for state in states:
            for key in state.pending:
                state.embeddings[key] = fresh.get(key, self.images.get(key))
            state.pending = {}

    def _encode(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run new images' pixels through the vision tower in one batch and keep them in the image cache."""
        pixels = torch.stack(list(images.values())).to(self.device)
        encoded = dict(zip(images, self.model.encode_images(pixels), strict=True))
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
        self.stats.image_cache_hits += state.cached_images
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
        """Advance every unfinished sequence by one token with one forward for all of them. Sequences of the
        batch that are not given stay in their slots untouched (unless a joining one needs the room)."""
        active = [seq for seq in seqs if not seq.finished]
        joining = [seq for seq in active if seq not in self.batch and seq.state.kv is not None]
        self._make_room(len(joining), keep=set(active))
        for seq in joining:
            self.batch.join([(seq, seq.state.kv)])
            seq.state.kv = None
        if joining:  # their prefill KV, now copied into the batch: its pages back before finished rows are cloned
            release_freed_memory()
        advancing = [seq for seq in active if seq in self.batch]
        if not advancing:
            return
        logits = self.batch.step(self._decoder, advancing, [seq.state.generated[-1] for seq in advancing])
        self.stats.decode_steps += 1
        self.stats.decoded_tokens += len(advancing)
        self._advance_all(advancing, logits)

    def _make_room(self, needed: int, *, keep: set[Sequence]) -> None:
        """Set sequences that are not in ``keep`` aside (their KV copied out) until ``needed`` slots are free."""
        for row in self.batch.rows:
            if self.batch.free >= needed:
                return
            if row not in keep:
                row.state.kv = self.batch.leave(row, keep_kv=True)

    def _advance_all(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Choose every sequence's next token from its row of ``logits`` and take it."""
        for seq, token in zip(seqs, self._choose(seqs, logits), strict=True):
            self._accept(seq, token)

    @staticmethod
    def _choose(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Greedy rows in one argmax (one device sync for all of them); sampled rows with their own sampler."""
        greedy = [index for index, seq in enumerate(seqs) if seq.state.sampler.greedy]
        tokens = [0] * len(seqs)
        if greedy:
            rows = logits if len(greedy) == len(seqs) else logits[greedy]
            for index, token in zip(greedy, rows.argmax(dim=-1).tolist(), strict=True):
                tokens[index] = token
        for index, seq in enumerate(seqs):
            if not seq.state.sampler.greedy:
                tokens[index] = seq.state.sampler.choose(logits[index].float())
        return tokens

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Choose one sequence's next token from its logits ``[vocab]`` and take it."""
        self._accept(seq, seq.state.sampler.choose(logits.float()))

    def _accept(self, seq: Sequence, token: int) -> None:
        """Take the next token, update the reply text, and end the sequence at EOS, a new turn or its
        length limit."""
        state: SequenceState = seq.state
        state.steps += 1
        eos = token == self.tokenizer.eos_id
        if not eos:
            state.generated.append(token)
        out_of_room = seq.prompt_tokens + state.steps >= self.context_length
        length = state.steps >= seq.request.generation.max_new_tokens or out_of_room
        reply = state.reader.read(state.generated, final=eos or length)
        if reply.text.startswith(seq.text):
            seq.text = reply.text
        else:  # cannot happen with the hold-back rules; never rewrite what was streamed
            log.warning("request %s: reply text changed under the stream", seq.request_id)
        kept_all = reply.kept_ids == len(state.generated)
        seq.output_ids = state.generated if kept_all else state.generated[: reply.kept_ids]
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
        in_batch = seq in self.batch
        positions = self.batch.length(seq) if in_batch else kv_length(state.kv or [])
        keep = seq.finished and 0 < positions <= self.prefixes.max_tokens
        kv = self.batch.leave(seq, keep_kv=keep) if in_batch else state.kv
        if kv is not None and keep:
            self._remember(state, kv)
        state.kv = None
        state.embeddings, state.pending = {}, {}
        if in_batch and not len(self.batch):
            release_freed_memory()  # the batch emptied: hand what its steps freed back to the system

    def _remember(self, state: SequenceState, kv: KV) -> None:
        fed = kv_length(kv) - state.prompt.length  # generated tokens that were fed back (not the last one)
        self.prefixes.store(state.items + tuple(state.generated[:fed]), kv)


def load_engine(weights: Path, *, device: str = "auto", dtype: str = "auto", quantize: str = "none",
                progress: Callable[[str], None] | None = None,
                options: EngineOptions | None = None) -> MiniGPT4Engine:
    """Load the model from a weights directory and wrap it in the engine (with its caches)."""
    loaded = load_model(Path(weights), device=device, dtype=dtype, quantize=quantize, progress=progress)
    return MiniGPT4Engine(loaded, options=options)
