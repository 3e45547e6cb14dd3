"""Typed settings, read once at start-up from the environment and ``.env``, then passed in.

Every field here is documented in ``.env.example`` (a test keeps the two in step). A bad value stops
start-up with one sentence naming the variable: see :func:`load_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_worker.wire.choices import DEFAULT_QUANTIZE, DTYPE_CHOICES, QUANTIZE_CHOICES
from model_worker.wire.protocol import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_REQUEST_TIMEOUT_S

#: A comma-separated list in the environment ("a,b,c"), a tuple in code.
IdList = Annotated[tuple[str, ...], NoDecode]


class SettingsError(Exception):
    """Invalid settings or refused credentials; its text is the one human message to show (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # --- Discord ---
    discord_token: SecretStr | None = None
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_dev_guild_id: int | None = None
    discord_allow_dms: bool = True

    # --- Slack ---
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_base_url: str = "https://slack.com/api/"
    slack_mode: Literal["socket", "http"] = "socket"
    slack_http_port: int = Field(3000, ge=1, le=65535)
    slack_http_host: str = "0.0.0.0"  # where HTTP events mode listens (SLACK_MODE=http)
    slack_allow_dms: bool = True

    # --- the model worker ---
    model_weights: str = "./weights"  # a weights directory, or "tiny" for the dry-run weights
    worker_url: str | None = None  # http://HOST:PORT or unix:/path; unset: the bot starts its own worker
    worker_token: SecretStr | None = None  # bearer token for a worker bound to a non-loopback address
    worker_device: str = "auto"  # auto, cuda, cuda:N, cpu
    worker_dtype: Literal[DTYPE_CHOICES] = "auto"
    worker_quantize: Literal[QUANTIZE_CHOICES] = DEFAULT_QUANTIZE  # the language model's weights (README, Small hosts)
    worker_memory_budget_gb: float | None = Field(None, gt=0)  # beyond the weights; unset: most of what is free
    worker_restart_backoff_s: float = Field(2.0, gt=0, le=300)
    worker_request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    worker_step_timeout_s: float | None = Field(None, gt=0)  # unset: the worker's own default per device
    queue_url: SecretStr | None = None  # redis:// or rediss:// for several workers; unset: local worker

    # --- storage ---
    data_dir: Path = Path("./data")
    image_retention_days: float = Field(30.0, gt=0)
    image_retention_bytes: int = Field(2_000_000_000, gt=0)
    conversation_retention_days: float | None = Field(None, gt=0)  # unset: conversation text is kept

    # --- behaviour ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    default_language: Literal["en", "ja"] = "en"
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, gt=0)
    max_image_pixels: int = Field(50_000_000, gt=0)
    max_image_side: int = Field(2048, ge=224)
    max_images_per_message: int = Field(4, ge=1, le=10)
    max_new_tokens: int = Field(512, ge=1, le=1536)
    temperature: float = Field(1.0, gt=0, le=5.0)
    top_p: float = Field(0.85, gt=0, le=1.0)
    top_k: int = Field(50, ge=0)

    # --- access and limits ---
    allowed_workspaces: IdList = ()  # Discord guild ids or Slack team ids; empty: all
    denied_workspaces: IdList = ()
    allowed_channels: IdList = ()  # empty: all; a thread counts as its parent channel too
    denied_channels: IdList = ()
    allowed_roles: IdList = ()  # Discord role ids; empty: all
    denied_roles: IdList = ()
    allowed_users: IdList = ()  # empty: everyone
    denied_users: IdList = ()
    admin_users: IdList = ()  # bypass limits and lists
    notify_not_allowed: bool = False  # reply with a short notice where the bot may not answer
    rate_limit_per_minute: float = Field(6.0, gt=0)
    rate_limit_burst: int = Field(3, ge=1)
    max_in_flight_per_user: int = Field(1, ge=1)

    @field_validator(
        "allowed_workspaces", "denied_workspaces", "allowed_channels", "denied_channels",
        "allowed_roles", "denied_roles", "allowed_users", "denied_users", "admin_users",
        mode="before",
    )
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("worker_url")
    @classmethod
    def _check_worker_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not (value.startswith(("http://", "https://", "unix:"))):
            raise ValueError("expected http://HOST:PORT or unix:/path/to/worker.sock")
        return value

    @field_validator("queue_url")
    @classmethod
    def _check_queue_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("expected redis://[:password@]host:port/db or rediss://...")
        return value

    # --- derived ---
    @property
    def database_path(self) -> Path:
        return self.data_dir / "bot.sqlite3"

    @property
    def discord_enabled(self) -> bool:
        return self.discord_token is not None

    @property
    def slack_enabled(self) -> bool:
        if self.slack_bot_token is None:
            return False
        return self.slack_app_token is not None if self.slack_mode == "socket" else True


def load_settings(**overrides: object) -> Settings:
    """Read settings once; on a bad value raise :class:`SettingsError` naming the variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "_".join(str(part) for part in err["loc"]).upper() or "settings"
            secret = any(word in name for word in ("TOKEN", "SECRET", "QUEUE_URL"))
            shown = "" if secret else f" (got {err.get('input')!r})"
            lines.append(f"{name}: {err['msg']}{shown}")
        raise SettingsError("Invalid configuration:\n  " + "\n  ".join(lines)) from None
    if settings.slack_mode == "http" and settings.slack_bot_token and not settings.slack_signing_secret:
        raise SettingsError("Invalid configuration:\n  SLACK_SIGNING_SECRET: required when SLACK_MODE=http")
    return settings
