"""Bounded work under load, measured: the bot's memory under a crowd, and a huge conversation's cost to others.

    .venv/bin/python -m benchmarks.bounded_work

1. **Crowd.** The real bot process (``python -m bot slack``) against the fake Slack, with a real worker on
   tiny weights: 200 questions with a photo each (``--photo-side`` pixels of JPEG noise, about 1 MB at the
   default) from 50 users within 10 s. Prints how many were answered and how many told "busy" (each
   exactly once), the time until everyone was told, and the bot's peak resident memory (``VmHWM``).
2. **Long conversation.** Four conversations stream answers of ``--other-tokens`` tokens from the worker,
   first alone, then while a conversation of 2,000 turns of 40,000 characters is asked at the same time (the request built the way
   the bot builds it: the newest turns that fit, within the protocol's caps). Prints the others' tokens/s
   in both runs and the ratio (the target: at least 0.8), and what building the huge request cost the bot.

Absolute figures only mean something on the machine that produced them; the JSON line records the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bot.chat.context import ContextBudget, conversation_tail, request_turns
from bot.chat.store import StoredTurn
from bot.worker_client.http import HttpWorkerClient
from model_worker.model.tiny import make_tiny
from model_worker.wire.protocol import ChatRequest, DoneEvent, TokenEvent
from tests.fakes.slack_fake import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.support.crowd import Crowd
from tests.support.requests import one_turn
from tests.support.worker import run_worker


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


async def crowd(weights: Path, workdir: Path, *, questions: int, users: int, within_s: float,
                photo_side: int) -> dict:
    fake = FakeSlack()
    await fake.start()
    with run_worker(weights, workdir / "worker") as worker:
        env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN,
               "SLACK_API_BASE_URL": fake.api_url, "WORKER_URL": worker.url, "DATA_DIR": str(workdir / "data"),
               "MAX_NEW_TOKENS": "8", "MAX_IN_FLIGHT_PER_USER": "4", "RATE_LIMIT_BURST": "10",
               "LOG_LEVEL": "WARNING"}
        bot = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "slack", env=env,
                                                   stdin=asyncio.subprocess.DEVNULL)
        try:
            await fake.wait_connected()
            started = time.perf_counter()
            asked = await Crowd.ask(fake, questions=questions, users=users, within_s=within_s,
                                    photo_size=(photo_side, photo_side * 3 // 4))
            await fake.wait_for(asked.everyone_told, within_s=600)
            told_s = time.perf_counter() - started
            rss = peak_rss_mb(bot.pid)
        finally:
            bot.terminate()
            await bot.wait()
            await fake.stop()
    outcomes = [result for results in asked.results() for result in results]
    return {"questions": questions, "users": users, "within_s": within_s, "photo_side": photo_side,
            "answered": outcomes.count("answer"), "busy": outcomes.count("busy"),
            "told_more_than_once": sum(len(r) > 1 for r in asked.results()), "everyone_told_s": round(told_s, 1),
            "bot_peak_rss_mb": round(rss, 1)}


def huge_conversation(*, turns: int, chars: int, max_new_tokens: int) -> tuple[ChatRequest, float]:
    """The request the bot builds for a conversation of ``turns`` turns of ``chars`` characters each."""
    text = ("wall of text " * (chars // 13 + 1))[:chars]
    stored = [StoredTurn(i, "user" if i % 2 == 0 else "assistant", text, (), None, None, None,
                         "answered" if i % 2 == 0 else "complete", 0.0) for i in range(turns)]
    stored[-1] = StoredTurn(turns, "user", text, (), None, None, None, "pending", 0.0)
    started = time.perf_counter()
    budget = ContextBudget.for_answer(max_new_tokens=max_new_tokens, image_bytes=0)
    conversation = request_turns(conversation_tail(stored, budget), {}, budget)
    request = ChatRequest(user="huge", conversation=conversation,
                          generation={"greedy": True, "max_new_tokens": max_new_tokens})
    return request, time.perf_counter() - started


async def stream_rate(client: HttpWorkerClient, request: ChatRequest) -> tuple[int, float]:
    """(tokens, seconds from the first token to the end) of one answer."""
    first = end = None
    async for event in client.chat(request):
        if isinstance(event, TokenEvent) and first is None:
            first = time.perf_counter()
        if isinstance(event, DoneEvent):
            end, tokens = time.perf_counter(), event.usage.completion_tokens
    return tokens, (end - (first or end))


async def others_rate(client: HttpWorkerClient, *, others: int, tokens: int,
                      huge: ChatRequest | None) -> float:
    """Aggregate tokens/s of ``others`` conversations (with ``huge`` asked at the same time)."""
    requests = [one_turn(f"Tell me about topic {i}.", user=f"other-{i}", max_new_tokens=tokens) for i in range(others)]
    background = asyncio.create_task(stream_rate(client, huge)) if huge is not None else None
    results = await asyncio.gather(*(stream_rate(client, r) for r in requests))
    if background is not None:
        await background
    return sum(n for n, _ in results) / max(max(s for _, s in results), 1e-9)


async def long_conversation(weights: Path, workdir: Path, *, repeats: int, other_tokens: int) -> dict:
    huge, build_s = huge_conversation(turns=2000, chars=40_000, max_new_tokens=64)
    with run_worker(weights, workdir / "worker-long", max_batch_size=8) as worker:
        client = worker.client()
        try:
            await others_rate(client, others=4, tokens=16, huge=None)  # warm-up
            alone, together = [], []
            for _ in range(repeats):
                alone.append(await others_rate(client, others=4, tokens=other_tokens, huge=None))
                together.append(await others_rate(client, others=4, tokens=other_tokens, huge=huge))
        finally:
            await client.close()
    ratio = statistics.median(t / a for t, a in zip(together, alone, strict=True))
    return {"huge_request_turns": len(huge.conversation),
            "huge_request_chars": sum(len(t.text) for t in huge.conversation),
            "bot_build_ms": round(build_s * 1000, 1),
            "others_tok_s_alone": [round(x, 1) for x in alone],
            "others_tok_s_with_huge": [round(x, 1) for x in together],
            "other_tokens": other_tokens, "ratio_median": round(ratio, 3), "target": ">= 0.8"}


async def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_tiny(workdir / "weights", seed=0)
        report = {"crowd": None if args.skip_crowd else await crowd(
                      workdir / "weights", workdir, questions=args.questions, users=args.users,
                      within_s=args.within_s, photo_side=args.photo_side),
                  "long_conversation": await long_conversation(workdir / "weights", workdir, repeats=args.repeats,
                                                               other_tokens=args.other_tokens),
                  "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()}
    crowd_report, long_report = report["crowd"], report["long_conversation"]
    if crowd_report:
            print(f"crowd: {crowd_report['questions']} photo questions from {crowd_report['users']} users in "
              f"{crowd_report['within_s']:g} s -> {crowd_report['answered']} answered, {crowd_report['busy']} told "
              f"busy, {crowd_report['told_more_than_once']} told twice; everyone told after "
              f"{crowd_report['everyone_told_s']} s; bot peak RSS {crowd_report['bot_peak_rss_mb']} MiB")
    print(f"long conversation: request of {long_report['huge_request_turns']} turns / "
          f"{long_report['huge_request_chars']} chars built in {long_report['bot_build_ms']} ms; others "
          f"answering {long_report['other_tokens']} tokens: "
          f"{long_report['others_tok_s_alone']} tok/s alone, {long_report['others_tok_s_with_huge']} with it: "
          f"ratio {long_report['ratio_median']} (target >= 0.8)")
    print(json.dumps(report))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--within-s", type=float, default=10.0)
    parser.add_argument("--photo-side", type=int, default=1024, help="photo width in pixels (JPEG noise)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--other-tokens", type=int, default=256,
                        help="tokens each of the other conversations answers (default 256)")
    parser.add_argument("--skip-crowd", action="store_true", help="measure the long conversation only")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
