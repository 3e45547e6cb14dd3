"""The image path (ViT + ln_vision + Q-Former + projection) against an independent implementation."""

from __future__ import annotations

import torch

from tests.model_worker.model.lavis_maths import blip2_vision, qformer_and_projection


def test_image_path_matches_independent_maths(loaded, tiny_weights):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ours = loaded.model.encode_images(pixels)
        vit = blip2_vision(tiny_weights)
        image_tokens = vit(pixel_values=pixels).last_hidden_state  # includes ln_vision (eps 1e-5)
        # The worker's ViT alone (before ln_vision) against the independent one.
        ours_vit = loaded.model.visual_encoder.forward_features(pixels)
        theirs_vit = vit.encoder(inputs_embeds=vit.embeddings(pixels)).last_hidden_state
        reference = qformer_and_projection(tiny_weights, image_tokens)
    assert ours_vit.shape == (2, 257, 32)
    torch.testing.assert_close(ours_vit, theirs_vit, rtol=1e-5, atol=1e-5)
    assert ours.shape == reference.shape == (2, 4, 64)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (ours - reference).abs().max() < 1e-5 and ours.abs().mean() > 1e-3
