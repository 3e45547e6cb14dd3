"""The engine's settings (plain data: the serve command builds them without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class EngineOptions:
    """Batch size, cache bounds and device options; the defaults fit a 16 GB card next to the fp16 model."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # sequences decoded together at most
    image_cache_entries: int = 256  # image embeddings kept by content hash
    image_cache_mb: float = 64.0  # ... and their memory at most (one real image: 32 x 2816 fp16 = 176 KB)
    prefix_cache_tokens: int = 4096  # positions of finished sequences' KV kept for follow-up turns
    # Positions per batch row that the static KV cache may hold (None: the model's context length, 2048). The
    # cache grows on demand up to max_batch_size rows of this; it also caps prompt + new tokens.
    kv_cache_positions: int | None = None
    lean_decode: bool = True  # decode steps without transformers' per-call plumbing (same modules, same maths)
    cuda_graphs: bool = True  # replay decode steps as CUDA graphs (CUDA devices only; CPU ignores it)
    compile_decode: bool = False  # torch.compile each layer's MLP (slow first requests; off by default)

    @property
    def image_cache_bytes(self) -> int:
        return int(self.image_cache_mb * 2**20)
