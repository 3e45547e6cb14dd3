"""The model worker: loads rinna's bilingual MiniGPT-4 and serves it (see README, "Architecture")."""

import logging as _logging

# transformers imports torchao whenever it is installed (the worker's quantization), and torchao 0.18 on
# torch 2.14 registers two enums in a way torch now logs as deprecated, once per process: noise in every
# worker's log, nothing to act on. Set here, before anything of the worker imports transformers.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
