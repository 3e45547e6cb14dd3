"""The MiniGPT-4 model itself: architecture, weights, preprocessing, prompt and tokenizer (torch side)."""

import logging

# transformers imports torchao whenever it is installed, and torchao 0.18 on torch 2.14 registers two enums in
# a way torch now logs as deprecated, once per process: noise in the worker's log, nothing to act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
