"""``serve``'s throughput options reach the engine options and the scheduler limits."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model_worker.commands import serve
from model_worker.engine.options import EngineOptions


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(["--weights", "w", *argv])


def test_defaults_leave_in_flight_unlimited_and_compile_off():
    config = serve.config_from_args(parse())
    assert config.limits.max_tokens_in_flight is None
    assert config.engine_options == EngineOptions()
    assert config.weights == Path("w")


def test_every_throughput_option_is_passed_on():
    config = serve.config_from_args(parse("--max-batch-size", "32", "--max-tokens-in-flight", "20000",
                                          "--image-cache-size", "10", "--image-cache-mb", "2.5",
                                          "--prefix-cache-tokens", "0", "--compile-decode"))
    assert config.engine_options.max_batch_size == 32 and config.limits.max_tokens_in_flight == 20000
    assert config.engine_options == EngineOptions(max_batch_size=32, image_cache_entries=10, image_cache_mb=2.5, prefix_cache_tokens=0,
                                                  compile_decode=True)


def test_a_negative_cache_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse("--prefix-cache-tokens", "-1")
    assert "must be 0 or more" in capsys.readouterr().err
