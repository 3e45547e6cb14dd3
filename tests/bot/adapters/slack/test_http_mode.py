"""HTTP events mode: Bolt verifies the signature; only a well-signed request is answered."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
from slack_sdk.signature import SignatureVerifier

from bot.adapters.slack import EVENTS_PATH
from bot.chat.i18n import t
from bot.worker_client.http import HttpWorkerClient
from tests.bot.adapters.slack.harness import mention_event, running_bot, slack_settings
from tests.fakes.slack_fake import FakeSlack, event_callback
from tests.support.ports import free_port

SIGNING_SECRET = "fake-signing-secret"


def _signed_headers(body: str, secret: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": signature}


async def _post_when_listening(url: str, body: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.post(url, data=body.encode(), headers=headers) as response:
                    return response.status
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
    raise AssertionError("the Slack HTTP endpoint never started listening")


async def test_badly_signed_request_is_rejected_and_well_signed_one_answered(
        fake: FakeSlack, tmp_path: Path, idle_worker: HttpWorkerClient) -> None:
    port = free_port()
    settings = slack_settings(fake, tmp_path, slack_mode="http", slack_signing_secret=SIGNING_SECRET,
                              slack_http_host="127.0.0.1", slack_http_port=port, slack_app_token=None)
    url = f"http://127.0.0.1:{port}{EVENTS_PATH}"
    async with running_bot(fake, settings, idle_worker):
        forged = json.dumps(event_callback(mention_event("help", ts="2.000100"), event_id="EvH1"))
        assert await _post_when_listening(url, forged, _signed_headers(forged, "not-the-secret")) == 401
        genuine = json.dumps(event_callback(mention_event("help", ts="2.000200"), event_id="EvH2"))
        assert await _post_when_listening(url, genuine, _signed_headers(genuine, SIGNING_SECRET)) == 200
        await fake.wait_for(lambda: fake.calls_to("chat.postMessage"))
    (post,) = fake.calls_to("chat.postMessage")
    assert post.args["thread_ts"] == "2.000200"
    assert post.args["text"].startswith(t("help", "en", max_images=0, accepted="", max_mb=0)[:40])
    assert fake.calls_to("apps.connections.open") == []
