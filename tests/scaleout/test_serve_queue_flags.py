"""``serve --queue``: the URL comes from the flag or from QUEUE_URL, and a wrong one stops start-up clearly."""

from __future__ import annotations

import pytest

from model_worker.__main__ import build_parser
from model_worker.commands import serve


def parse(*argv: str):
    return build_parser().parse_args(["serve", "--weights", "w", "--socket", "s.sock", *argv])


def test_queue_url_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("QUEUE_URL", "rediss://:secret@redis.internal:6380/0")
    from_env = serve.config_from_args(parse("--queue", "--claim-idle-ms", "5000"))
    assert from_env.queue_url == "rediss://:secret@redis.internal:6380/0"
    assert from_env.claim_idle_ms == 5000 and from_env.socket_path is not None
    assert "secret" not in repr(from_env)
    assert serve.config_from_args(parse("--queue", "redis://q:6379/1")).queue_url == "redis://q:6379/1"
    assert serve.config_from_args(parse()).queue_url is None


@pytest.mark.parametrize("argv", [("--queue", "http://redis:6379"), ("--queue",)])
def test_bad_or_missing_queue_url_stops_start_up(argv, monkeypatch, capsys):
    monkeypatch.delenv("QUEUE_URL", raising=False)
    assert serve.run(parse(*argv)) == 2
    assert "--queue needs redis://" in capsys.readouterr().err
