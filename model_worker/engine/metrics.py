"""The engine's own counters (caches, tokens prefilled and decoded, KV memory) exposed as Prometheus metrics.

Read at scrape time from the engine's ``stats`` and caches, so the engine thread never touches the registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_COUNTERS = {
    "images_encoded": ("worker_image_cache_misses", "Images encoded by the vision tower (not in the cache)"),
    "image_cache_hits": ("worker_image_cache_hits", "Images whose cached embedding was reused"),
    "image_batches": ("worker_image_encode_batches", "Vision-tower forwards (new images of a prefill share one)"),
    "prefix_cache_hits": ("worker_prefix_cache_hits", "Prefills that reused a cached prefix"),
    "prefix_cache_misses": ("worker_prefix_cache_misses", "Prefills that found no cached prefix"),
    "prefix_reused_tokens": ("worker_prefix_reused_tokens", "Prompt positions taken from the prefix cache"),
    "prefilled_tokens": ("worker_prefilled_tokens", "Prompt positions computed by prefill"),
    "decoded_tokens": ("worker_decoded_tokens", "Tokens fed by decode steps (all rows of all steps)"),
    "decode_steps": ("worker_decode_steps", "Batched decode forwards"),
}


class EngineStatsCollector(Collector):
    """Collects an engine's ``stats`` counters and the sizes of its image and prefix caches."""

    def __init__(self, engine: object) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self._engine.stats
        for field, (name, documentation) in _COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=getattr(stats, field))
        images = getattr(self._engine, "images", None)
        if images is not None:
            yield GaugeMetricFamily("worker_image_cache_entries", "Image embeddings held", value=len(images))
            yield GaugeMetricFamily("worker_image_cache_bytes", "Memory of the image embeddings held",
                                    value=images.bytes)
        device = getattr(self._engine, "device", None)
        if device is not None and device.type == "cuda":
            import torch  # already loaded by the engine

            yield GaugeMetricFamily("worker_gpu_peak_memory_bytes", "Peak GPU memory allocated by the worker",
                                    value=torch.cuda.max_memory_allocated(device))
        kv_cache = getattr(self._engine, "kv_cache", None)
        if kv_cache is not None:
            yield GaugeMetricFamily("worker_kv_cache_bytes", "Memory of the preallocated decode KV cache",
                                    value=kv_cache.bytes)
        prefixes = getattr(self._engine, "prefixes", None)
        if prefixes is not None:
            yield GaugeMetricFamily("worker_prefix_cache_tokens", "Positions of KV held by the prefix cache",
                                    value=prefixes.tokens)
