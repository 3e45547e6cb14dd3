"""``python -m bot``: run the chat bot (also installed as ``minigpt4-bot``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bot.settings import Settings, SettingsError, load_settings

log = logging.getLogger("bot")

COMMANDS = {
    "run": "start every configured front end (Discord, Slack) or, with none configured, the console chat "
    "(the default)",
    "console": "chat with the model in this terminal: /image PATH attaches an image, /reset, /help, /quit",
    "discord": "run only the Discord adapter (needs DISCORD_TOKEN)",
    "slack": "run only the Slack adapter (needs SLACK_BOT_TOKEN, plus SLACK_APP_TOKEN in socket mode)",
    "sync-commands": "register the Discord slash commands (/reset, /help) globally, or in DISCORD_DEV_GUILD_ID",
    "check": "validate the configuration and print it with secrets masked",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Discord/Slack bot for rinna's bilingual MiniGPT-4. Settings come from the environment and "
        ".env (see .env.example). With no Discord or Slack credentials it opens the console chat.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    from bot.app import platforms_to_run
    from bot.logging_setup import configure_bot_logging

    mode = "auto" if command in ("run", "check", "sync-commands") else command
    console = platforms_to_run(settings, mode) == ["console"] and command != "check"
    log_file = settings.data_dir / "bot.log" if console else None
    configure_bot_logging(settings, log_file=log_file)
    if log_file is not None:
        print(f"(log: {log_file})", file=sys.stderr)
    if command == "check":
        return _print_settings(settings)
    missing = _missing_credentials(settings, command)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    return asyncio.run(_run_until_signalled(settings, command, mode))


async def _run_until_signalled(settings: Settings, command: str, mode) -> int:
    from bot.app import run_bot
    from bot.weights import WeightsUnavailable

    if command == "sync-commands":
        from bot.adapters.discord import sync_commands

        try:
            await sync_commands(settings)
        except SettingsError as exc:
            print(exc.message, file=sys.stderr)
            return 2
        return 0
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        return await run_bot(settings, mode)
    except WeightsUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except SettingsError as exc:  # the worker cannot be used as configured (another protocol version)
        log.error("%s", exc.message)
        print(exc.message, file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        log.info("stopped")
        return 0


def _missing_credentials(settings: Settings, command: str) -> str | None:
    if command in ("discord", "sync-commands") and not settings.discord_enabled:
        return "DISCORD_TOKEN is not set: add your bot token to .env (README, 'Discord set-up')."
    if command == "slack" and not settings.slack_enabled:
        need = "SLACK_BOT_TOKEN and SLACK_APP_TOKEN" if settings.slack_mode == "socket" else "SLACK_BOT_TOKEN"
        return f"{need} must be set for Slack: add them to .env (README, 'Slack set-up')."
    return None


def _print_settings(settings: Settings) -> int:
    for name, value in sorted(settings.model_dump().items()):
        shown = "(set, hidden)" if "Secret" in type(value).__name__ else value
        print(f"{name.upper()}={shown}")
    print("configuration OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
