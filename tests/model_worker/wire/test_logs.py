"""The shared log format masks secrets in every process: configured values, URL passwords, bearer tokens."""

from __future__ import annotations

import io
import logging

from model_worker.wire.logs import SecretMasker, configure_logging


def test_generic_secret_shapes_are_masked_without_any_registration():
    masker = SecretMasker()
    text = masker.mask("redis://:pw123@queue:6379/0 rediss://user:s3cr3t@q https://u:p4ss@host "
                       "Authorization: Bearer abcdefgh12345678")
    for secret in ("pw123", "s3cr3t", "p4ss", "abcdefgh12345678"):
        assert secret not in text, text
    assert "queue:6379/0" in text  # only the secret goes


def test_configured_logging_masks_values_and_registered_shapes_in_messages_and_tracebacks():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        configure_logging("INFO", secrets=["hunter22"], secret_shapes=[r"tok-[0-9]{6}"], stream=stream)
        log = logging.getLogger("test.logs")
        log.info("token hunter22 and tok-123456")
        try:
            raise RuntimeError("failed with hunter22")
        except RuntimeError:
            log.exception("it broke")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    written = stream.getvalue()
    assert "hunter22" not in written and "tok-123456" not in written and written.count("***") >= 3
    assert "\n    Traceback" in written  # one event, continuation lines indented
