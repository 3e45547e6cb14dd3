"""The one English/Japanese catalogue for every user-facing string, adapters' static labels included.

Strings are fixed text with ``{name}`` placeholders filled by :func:`t`; the model never translates the
interface. A meta-test checks that every key exists in both languages with the same placeholders.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping
from types import MappingProxyType

log = logging.getLogger(__name__)

LANGUAGES = ("en", "ja")

_EN: dict[str, str] = {
    # waiting and answering
    "placeholder_waiting": "Thinking…",
    "queued": "Queued: #{position}",
    "started": "Thinking…",
    "restarted": "The model restarted; starting your answer again…",
    "cancelled_suffix": "(stopped)",
    "empty_answer": "(The model gave no answer. Try rephrasing.)",
    "thread_name_default": "Chat with MiniGPT-4",
    # commands
    "help": (
        "I answer questions about text and images (English or Japanese).\n"
        "- Mention me in a channel to start a conversation; I reply in a thread, and you can keep talking "
        "there without mentioning me. In a DM just write.\n"
        "- Attach up to {max_images} images ({accepted}, up to {max_mb} MB each).\n"
        "- `reset` starts a new conversation here; `help` shows this message.\n"
        "- Press Stop to end an answer early."
    ),
    "reset_done": "Started a new conversation. Earlier messages here are forgotten.",
    "reset_where": "Nothing was reset: this command cannot tell which conversation you mean. To start over, "
    "type `reset` in the conversation's thread (in a DM, anywhere in the DM).",
    "empty_message": "Send some text or an image and I'll answer.",
    "message_cut": "Your message was longer than the model can read, so I answered its beginning.",
    # attachments
    "image_unsupported": "{name} was skipped: it is not a supported image. Accepted: {accepted}.",
    "image_too_large": "{name} was skipped: it is larger than {limit_mb} MB.",
    "image_too_many_pixels": "{name} was skipped: it has more than {limit_mp} megapixels.",
    "image_corrupt": "{name} was skipped: it could not be read (damaged or incomplete). Accepted: {accepted}.",
    "image_too_many": "Only the first {limit} images were used.",
    "attachment_no_access": "{name} was skipped: I could not download it.",
    "attachment_fetch_failed": "{name} was skipped: I could not fetch it (the download failed or took too "
    "long). Try sending it again.",
    # limits and access
    "rate_limited": "You're sending messages faster than I can answer. Try again in {seconds} s.",
    "too_many_in_flight": "Please wait until your current answer is finished (or press Stop), then try again.",
    "not_allowed": "Sorry, I'm not allowed to answer here.",
    # failures (chosen in bot.chat.failures only)
    "worker_loading": "The model is still loading. Try again in a minute.",
    "worker_restarting": "The model is restarting. Try again in a minute.",
    "worker_unavailable": "The model is not reachable right now. The operator has been notified in the log.",
    "busy": "Too many people are asking right now. Try again in {seconds} s.",
    "timeout": "The answer took too long and was stopped. Try a shorter question.",
    "context_too_long": "Your message is too long for the model. Shorten it, or `reset` the conversation.",
    "bad_image": "The model could not use one of the images. Try another file.",
    "internal": "Something went wrong while answering. Try again; the operator can find details in the log.",
    # adapters' static labels
    "stop_button": "Stop",
    "cmd_reset_description": "Start a new conversation here",
    "cmd_help_description": "How to use this bot",
    "cancel_not_allowed": "Only the person who asked (or an admin) can stop this answer.",
    "thread_refused": "I may not open or post in a thread here (missing permission), so I'm answering in the "
    "channel instead.",
    "cmd_reset_name": "reset",  # Discord slash-command names (lower case, no spaces)
    "cmd_help_name": "help",
    # console
    "console_welcome": "Chat with MiniGPT-4. /image PATH attaches an image to your next message, "
    "/reset starts over, /help shows help, /quit leaves.",
    "console_prompt": "you> ",
    "console_image_attached": "Image attached to your next message: {path}",
    "console_image_missing": "Cannot read {path}.",
    "console_unknown_command": "Unknown command {command}. Try /help.",
    "console_bye": "Bye.",
    # Slack adapter (appended by the Slack adapter's author)
    "slack_file_access_hint": "Slack sent its sign-in page instead of the file. Ask the workspace admin to "
    "give the app the files:read scope (then reinstall it), and make sure the file is shared in this "
    "channel or conversation.",
}

_JA: dict[str, str] = {
    "placeholder_waiting": "考え中…",
    "queued": "順番待ち: {position}番目",
    "started": "考え中…",
    "restarted": "モデルが再起動したため、回答を最初からやり直しています…",
    "cancelled_suffix": "（停止しました）",
    "empty_answer": "（回答がありませんでした。言い方を変えてみてください。）",
    "thread_name_default": "MiniGPT-4 との会話",
    "help": (
        "テキストと画像について日本語または英語で答えます。\n"
        "- チャンネルでメンションすると会話が始まり、スレッドで返信します。スレッド内ではメンションなしで"
        "続けられます。DM ではそのまま書いてください。\n"
        "- 画像は {max_images} 枚まで添付できます（{accepted}、1 枚 {max_mb} MB まで）。\n"
        "- `リセット`（reset）でこの場所の会話を新しく始め、`ヘルプ`（help）でこの説明を表示します。\n"
        "- 停止ボタンで回答を途中で止められます。"
    ),
    "reset_done": "新しい会話を始めました。ここでのこれまでの発言は忘れました。",
    "reset_where": "リセットしていません: このコマンドではどの会話のことか分かりません。やり直すには、その会話の"
    "スレッドで `リセット`（reset）と書いてください（DM では DM のどこでも構いません）。",
    "empty_message": "テキストか画像を送ってください。",
    "message_cut": "メッセージがモデルの読める長さを超えていたため、最初の部分に回答しました。",
    "image_unsupported": "{name} はスキップしました: 対応していない画像です。対応形式: {accepted}。",
    "image_too_large": "{name} はスキップしました: {limit_mb} MB を超えています。",
    "image_too_many_pixels": "{name} はスキップしました: {limit_mp} メガピクセルを超えています。",
    "image_corrupt": "{name} はスキップしました: 読み込めませんでした（破損しているか不完全です）。"
    "対応形式: {accepted}。",
    "image_too_many": "最初の {limit} 枚の画像だけを使いました。",
    "attachment_no_access": "{name} はスキップしました: ダウンロードできませんでした。",
    "attachment_fetch_failed": "{name} はスキップしました: 取得できませんでした（ダウンロードが失敗したか、"
    "時間がかかりすぎました）。もう一度送ってみてください。",
    "rate_limited": "送信が速すぎます。{seconds} 秒後にもう一度お試しください。",
    "too_many_in_flight": "今の回答が終わるまで（または停止してから）お待ちください。",
    "not_allowed": "申し訳ありませんが、ここでは回答できません。",
    "worker_loading": "モデルを読み込み中です。1 分ほどしてからお試しください。",
    "worker_restarting": "モデルが再起動中です。1 分ほどしてからお試しください。",
    "worker_unavailable": "現在モデルに接続できません。詳細は運用者のログに記録されています。",
    "busy": "混み合っています。{seconds} 秒後にもう一度お試しください。",
    "timeout": "回答に時間がかかりすぎたため停止しました。短い質問でお試しください。",
    "context_too_long": "メッセージが長すぎます。短くするか、`リセット` で会話をやり直してください。",
    "bad_image": "モデルが画像の 1 つを使えませんでした。別のファイルでお試しください。",
    "internal": "回答中に問題が発生しました。もう一度お試しください。詳細は運用者のログにあります。",
    "stop_button": "停止",
    "cmd_reset_description": "この場所で新しい会話を始めます",
    "cmd_help_description": "このボットの使い方",
    "cancel_not_allowed": "この回答を止められるのは質問した本人か管理者だけです。",
    "thread_refused": "ここではスレッドを作成・投稿する権限がないため、チャンネルで回答します。",
    "cmd_reset_name": "リセット",
    "cmd_help_name": "ヘルプ",
    "console_welcome": "MiniGPT-4 とチャットします。/image パス で次のメッセージに画像を添付、"
    "/reset でやり直し、/help でヘルプ、/quit で終了します。",
    "console_prompt": "あなた> ",
    "console_image_attached": "次のメッセージに画像を添付します: {path}",
    "console_image_missing": "{path} を読めません。",
    "console_unknown_command": "{command} は不明なコマンドです。/help をお試しください。",
    "console_bye": "さようなら。",
    "slack_file_access_hint": "Slack からファイルではなくサインイン画面が返されました。ワークスペースの管理者に"
    "アプリへ files:read スコープを追加して再インストールするよう依頼し、ファイルがこのチャンネル（または"
    "会話）で共有されていることを確認してください。",
}

CATALOGUE: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"en": MappingProxyType(_EN), "ja": MappingProxyType(_JA)}
)


def placeholders(template: str) -> set[str]:
    """The ``{name}`` fields a template uses."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def t(key: str, lang: str, **params: object) -> str:
    """The catalogue string ``key`` in ``lang`` ("en" or "ja"; anything else falls back to English),
    with ``params`` filled in. An unknown key is a programming error and raises ``KeyError``."""
    table = CATALOGUE.get(lang, CATALOGUE["en"])
    template = table[key]
    try:
        return template.format(**params)
    except (KeyError, IndexError):
        log.error("catalogue string %r (%s) is missing parameters %s", key, lang, placeholders(template))
        return template


def language_for_locale(locale: str | None, default: str) -> str:
    """``ja``/``ja-JP`` -> "ja"; any other locale -> "en"; no locale -> ``default``."""
    if not locale:
        return default
    return "ja" if locale.strip().lower().replace("_", "-").split("-")[0] == "ja" else "en"
