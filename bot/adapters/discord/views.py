"""What the Discord adapter shows besides text: the Stop button and the /reset and /help commands.

Labels, names and descriptions come from the one catalogue (:mod:`bot.chat.i18n`); the translator hands
Discord their Japanese versions when the commands are synced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import discord
from discord import app_commands

from bot.chat.i18n import t

CommandName = Literal["reset", "help"]
COMMANDS: tuple[CommandName, ...] = ("reset", "help")

#: Discord locales we translate into; every other locale shows the English default.
_LANGUAGE_OF_LOCALE = {
    discord.Locale.japanese: "ja",
    discord.Locale.american_english: "en",
    discord.Locale.british_english: "en",
}


class StopHandler(Protocol):
    """The client the Stop button reports to (it owns the chat service)."""

    async def stop_pressed(self, interaction: discord.Interaction, request_id: str) -> None: ...


class StopButton(discord.ui.DynamicItem[discord.ui.Button], template=r"minigpt4:stop:(?P<request_id>[\w-]{1,80})"):
    """A Stop button whose custom_id carries the request id, so it works without stored view state
    (and after a restart, where it simply finds nothing to cancel)."""

    def __init__(self, request_id: str, *, label: str = "Stop") -> None:
        button = discord.ui.Button(label=label, style=discord.ButtonStyle.danger,
                                   custom_id=f"minigpt4:stop:{request_id}")
        super().__init__(button)
        self.request_id = request_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: Any, /) -> StopButton:
        return cls(match["request_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handler: StopHandler = interaction.client  # type: ignore[assignment]
        await handler.stop_pressed(interaction, self.request_id)


def stop_view(request_id: str, *, lang: str) -> discord.ui.View:
    """A view holding only the Stop button (a fully dynamic view: the client stores nothing for it)."""
    view = discord.ui.View(timeout=None)
    view.add_item(StopButton(request_id, label=t("stop_button", lang)))
    return view


class CatalogueTranslator(app_commands.Translator):
    """Translates command names and descriptions from the catalogue key in ``locale_str.extras``."""

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        key = string.extras.get("key")
        lang = _LANGUAGE_OF_LOCALE.get(locale)
        if key is None or lang is None:
            return None
        return t(key, lang)


def _localised(key: str) -> app_commands.locale_str:
    return app_commands.locale_str(t(key, "en"), key=key)


def build_commands(
    run: Callable[[discord.Interaction, CommandName], Awaitable[None]],
) -> list[app_commands.Command[Any, ..., None]]:
    """The slash commands, each calling ``run(interaction, name)``."""
    return [_command(name, run) for name in COMMANDS]


def _command(name: CommandName, run: Callable[[discord.Interaction, CommandName], Awaitable[None]],
             ) -> app_commands.Command[Any, ..., None]:
    async def callback(interaction: discord.Interaction) -> None:
        await run(interaction, name)

    return app_commands.Command(name=_localised(f"cmd_{name}_name"),
                                description=_localised(f"cmd_{name}_description"), callback=callback)
