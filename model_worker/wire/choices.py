"""The model options the worker's command line takes and the bot's settings pass on to it, as plain strings."""

DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")
QUANTIZE_CHOICES = ("none", "int8", "int4")
DEFAULT_QUANTIZE = "none"
