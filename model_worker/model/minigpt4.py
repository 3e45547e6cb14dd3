"""MiniGPT-4 assembled from library modules: timm ViT, ln_vision, HF Q-Former, projection, GPT-NeoX.

It only computes; loading lives in ``weights``/``bundle`` and generation in the engine and ``reference``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

from model_worker.model.arch import Arch
from model_worker.model.prompt import TokenizedPrompt
from model_worker.model.qformer import build_qformer
from model_worker.model.vision import build_vision_encoder


class MiniGPT4(nn.Module):
    """The whole model; parameter names are the loader's internal names (see ``weights``)."""

    def __init__(self, arch: Arch, llm_config: GPTNeoXConfig) -> None:
        super().__init__()
        self.arch = arch
        self.visual_encoder = build_vision_encoder(arch.vision)
        self.ln_vision = nn.LayerNorm(arch.vision.width, eps=1e-5)
        self.query_tokens = nn.Parameter(torch.zeros(1, arch.qformer.num_queries, arch.qformer.hidden))
        self.qformer = build_qformer(arch.qformer, encoder_width=arch.vision.width)
        self.llama_proj = nn.Linear(arch.qformer.hidden, llm_config.hidden_size)
        self.llm = GPTNeoXForCausalLM(llm_config)
        # Set by placement: the autocast dtype of the image path (None when everything is float32).
        self.autocast_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return self.llama_proj.weight.device

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.gpt_neox.embed_in.weight.dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings [B, num_queries, llm_hidden] (in the LLM's dtype) for pixels [B,3,H,W]."""
        with self._autocast():
            image_tokens = self.visual_encoder.forward_features(pixels.to(self.device))
            # LAVIS's ln_vision computes in float32 and returns the input's dtype.
            image_tokens = self.ln_vision(image_tokens.float()).to(image_tokens.dtype)
            queries = self.query_tokens.expand(image_tokens.shape[0], -1, -1)
            attention = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=self.device)
            query_output = self.qformer(
                query_embeds=queries, encoder_hidden_states=image_tokens, encoder_attention_mask=attention
            ).last_hidden_state
            projected = self.llama_proj(query_output)
        return projected.to(self.llm_dtype)

    def embed_tokens(self, ids: list[int] | tuple[int, ...]) -> torch.Tensor:
        """The LLM's input embeddings [len(ids), hidden] for token ids."""
        tensor = torch.tensor(list(ids), dtype=torch.long, device=self.device)
        return self.llm.gpt_neox.embed_in(tensor)

    def embed_prompt(self, prompt: TokenizedPrompt, image_embeds: torch.Tensor) -> torch.Tensor:
        """Interleave the text segments' embeddings with the images' [N, Q, H]: returns [1, L, H]."""
        if image_embeds.shape[0] != prompt.num_images:
            raise ValueError(f"prompt has {prompt.num_images} image slots but {image_embeds.shape[0]} images")
        parts: list[torch.Tensor] = []
        for index, segment in enumerate(prompt.segments):
            parts.append(self.embed_tokens(segment))
            if index < prompt.num_images:
                parts.append(image_embeds[index].to(self.llm_dtype))
        return torch.cat(parts, dim=0).unsqueeze(0)


def build_empty_model(arch: Arch, llm_config: GPTNeoXConfig) -> MiniGPT4:
    """The model with parameters on the meta device: no memory and no random init until weights land."""
    with torch.device("meta"):
        model = MiniGPT4(arch, llm_config)
    return model.eval()


def materialize_buffers(model: MiniGPT4, device: torch.device | str = "cpu") -> None:
    """Create the non-persistent buffers (no weights file holds them) after loading onto a meta model."""
    for block in model.visual_encoder.blocks:
        if getattr(block.attn, "k_bias", None) is not None:
            zeros = torch.zeros(block.attn.q_bias.shape, dtype=block.attn.q_bias.dtype, device=device)
            block.attn.register_buffer("k_bias", zeros, persistent=False)
    # The rotary frequencies stay float32, as the library computes them.
    model.llm.gpt_neox.rotary_emb = GPTNeoXRotaryEmbedding(config=model.llm.config).to(device)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left without values after loading: {left[:10]}")


def precision_plan(model: MiniGPT4, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype of every weight for a model run in ``dtype``, as the reference runs it in fp16 (LAVIS
    ``convert_weights_to_fp16`` on the ViT, fp16 LLM, the image path under autocast): the LLM in ``dtype``;
    norms, tokens, position embedding, q/v biases and ln_vision in float32; the Linear/Conv weights of the
    ViT, Q-Former and projection in ``dtype``. The reference keeps the Q-Former's and projection's in
    float32, but autocast casts them to ``dtype`` at every call, so storing them so gives the same numbers
    in half the memory. For float32 every weight is float32."""
    plan = {name: torch.float32 for name, _ in model.named_parameters()}
    if dtype == torch.float32:
        return plan
    plan |= {f"llm.{name}": dtype for name, _ in model.llm.named_parameters()}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and not module_name.startswith("llm."):
            plan |= {f"{module_name}.{name}": dtype for name, _ in module.named_parameters()}
    return plan


def autocast_dtype_for(dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype the image path runs under for a model placed in ``dtype`` (None: plain float32)."""
    return None if dtype == torch.float32 else dtype


def place_model(model: MiniGPT4, *, device: torch.device, dtype: torch.dtype) -> MiniGPT4:
    """Move and cast a loaded model as :func:`precision_plan` says (float32: everything float32)."""
    plan = precision_plan(model, dtype)
    for name, param in list(model.named_parameters()):
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[leaf] = nn.Parameter(param.data.to(device=device, dtype=plan[name]), requires_grad=False)
    for module in model.modules():
        for leaf, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[leaf] = buffer.to(device)
    model.autocast_dtype = autocast_dtype_for(dtype)
    return model


def place_mixed_precision(model: MiniGPT4, *, device: torch.device, dtype: torch.dtype) -> MiniGPT4:
    """The reference's mixed precision in ``dtype`` (kept for callers that name it; see :func:`place_model`)."""
    return place_model(model, device=device, dtype=dtype)
