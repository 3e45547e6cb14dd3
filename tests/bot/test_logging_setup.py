"""Log lines never show a secret: configured values, platform token shapes, URL passwords, bearer tokens."""

from __future__ import annotations

from bot.logging_setup import PLATFORM_TOKEN_SHAPES
from model_worker.wire.logs import SecretMasker


def test_log_lines_never_show_secrets() -> None:
    masker = SecretMasker(["s3cret-value"], PLATFORM_TOKEN_SHAPES)
    text = masker.mask("token s3cret-value xoxb-1234567890-abcdef and redis://:pw123@host:6379/0 "
                       "Authorization: Bearer abcdefgh12345678 MTIzNDU2Nzg5MDEyMzQ1Njc4OTAx.GaBcDe.abcdefghijklmnopqrstuvwxyz0")
    for secret in ("s3cret-value", "xoxb-1234567890", "pw123", "abcdefgh12345678", "MTIzNDU2Nzg5"):
        assert secret not in text, text
