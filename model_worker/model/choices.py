"""The model options a command line or a setting names, as plain strings (no torch here)."""

DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32")
QUANTIZE_CHOICES = ("none", "int8", "int4")
DEFAULT_QUANTIZE = "none"
