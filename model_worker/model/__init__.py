"""The MiniGPT-4 model itself: architecture, weights, preprocessing, prompt and tokenizer (torch side)."""
