"""Server-wide settings, read once from the environment and `.env`.

Every command builds one `Settings` with `load_settings()` and passes it down.
A missing, malformed or placeholder value stops start-up with a message naming
the variable and saying what is expected (`SettingsError`).
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storebot.errors import SettingsError

# Values from .env.example and common "fill me in" markers; refused for secrets and
# names because a server started with them would fail later, quietly.
_PLACEHOLDER = re.compile(
    r"^(|changeme|change-me|change_me|replace-me|todo|xxx+|your[-_ ].*|.*example\.(com|org)"
    r"|<.*>|sk-or-\.\.\.|\.\.\.)$",
    re.IGNORECASE,
)
_DNS_NAME = re.compile(
    r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$|^localhost$"
)
_MEM = re.compile(r"^(\d+)([bkmg])?$", re.IGNORECASE)
_MEM_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

Positive = Annotated[int, Field(gt=0)]


def parse_memory(value: str) -> int:
    """Docker-style size (`512m`, `1g`, `65536`) to bytes."""
    match = _MEM.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size like 512m or 1g")
    return int(match.group(1)) * _MEM_UNITS[(match.group(2) or "b").lower()]


def _refuse_placeholder(value: str) -> str:
    if _PLACEHOLDER.match(value.strip()):
        raise ValueError("is empty or still a placeholder; set a real value")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    # LLM (the meter holds the only key; bots never see it)
    OPENROUTER_API_KEY: SecretStr
    OPENROUTER_MODEL: str
    OPENROUTER_BASE_URL: str = "https://openrouter.ai/api/v1"

    # The LLM meter (`storebot meter`): where it listens (LLM_METER_URL is how bots
    # reach it), what a dollar of upstream cost is charged, and how it guards balances.
    METER_HOST: str = "127.0.0.1"
    METER_PORT: int = Field(default=8089, gt=0, lt=65536)
    LLM_MARKUP: Decimal = Field(default=Decimal("1.25"), ge=1, le=100)
    # Charged when a successful upstream answer reports no usage.cost (never free).
    LLM_UNKNOWN_COST_MICRO: int = Field(default=10_000, ge=0)
    METER_UPSTREAM_TIMEOUT_SECONDS: float = Field(default=120.0, gt=0)
    # LLM calls of one bot admitted at once: bounds the overspend past zero (see meter).
    METER_MAX_IN_FLIGHT_PER_BOT: Positive = 4
    METER_SYNC_SECONDS: float = Field(default=1.0, gt=0, le=30)
    METER_MAX_BODY_BYTES: Positive = 1024 * 1024

    # Prepaid LLM credit (always USD: the ledger counts micro-USD)
    TOPUP_PRESETS_USD: str = "5,10,25"
    TOPUP_MIN_USD: Decimal = Field(default=Decimal("5"), gt=0)
    TOPUP_MAX_USD: Decimal = Field(default=Decimal("500"), gt=0)
    # Owners are told once per crossing of each level (percent of the balance right
    # after their last top-up), and once more at zero.
    BALANCE_ALERT_PERCENTS: str = "50,20,5"

    # Public face
    BASE_DOMAIN: str
    PUBLIC_BASE_URL: str
    SUPPORT_EMAIL: str

    # Per-bot defaults (plans override CPU/memory/pids)
    DEFAULT_RATE_LIMIT_RPS: Positive = 5
    DEFAULT_RATE_LIMIT_BURST: Positive = 20
    DEFAULT_CPU_LIMIT: float = Field(default=1.0, gt=0, le=64)
    DEFAULT_MEM_LIMIT: str = "512m"
    BOT_PIDS_LIMIT: Positive = 64
    BOT_MAX_IN_FLIGHT: Positive = 4
    BOT_LOG_MAX_SIZE: str = "1m"
    BOT_LOG_MAX_FILES: Positive = 3
    BOT_TMPFS_SIZE: str = "16m"

    # Engine
    DATABASE_URL: str = "sqlite:///storebot.db"
    DATA_ROOT: Path = Path("/var/lib/clawdeploy/bots")
    DATA_RETENTION_DAYS: int = Field(default=0, ge=0)
    NULLCLAW_IMAGE: str = "ghcr.io/nullclaw/nullclaw:2026.2.26"
    BOT_NETWORK: str = "storebot-bots"
    BOT_NETWORK_SUBNET: str = "10.213.0.0/16"
    BOT_FIREWALL: bool = True
    LLM_METER_URL: str = "http://10.213.0.1:8089/v1"
    TELEGRAM_API_BASE: str = "https://api.telegram.org"
    STOREBOT_SECRET_KEY: SecretStr
    STOREBOT_INSTANCE: str = "default"
    DOCKER_HOST: str | None = None

    # The management bot (`storebot run`; the admin CLI needs none of these)
    STOREBOT_BOT_TOKEN: SecretStr | None = None
    OPS_CHAT_ID: int | None = None
    WEB_HOST: str = "127.0.0.1"
    WEB_PORT: int = Field(default=8080, gt=0, lt=65536)
    THROTTLE_PER_MINUTE: int = Field(default=30, gt=0)
    # polling (default) or webhook: Telegram then POSTs updates to
    # PUBLIC_BASE_URL/telegram/webhook with TELEGRAM_WEBHOOK_SECRET in a header.
    TELEGRAM_MODE: Literal["polling", "webhook"] = "polling"
    TELEGRAM_WEBHOOK_SECRET: SecretStr | None = None
    RENEWAL_GRACE_DAYS: float = Field(default=3, ge=0)
    JOBS_INTERVAL_SECONDS: float = Field(default=60, gt=0)

    # Operations: the ops chat (admins only), the anomaly watch, the reconciler
    ADMIN_USER_IDS: str = ""  # Telegram user ids, comma-separated
    ANOMALY_INTERVAL_SECONDS: float = Field(default=15, gt=0)
    ANOMALY_AUTO_SUSPEND: bool = True
    ANOMALY_CPU_PERCENT: float = Field(default=90, gt=0, le=100)
    ANOMALY_CPU_MINUTES: float = Field(default=5, gt=0)
    ANOMALY_MEM_PERCENT: float = Field(default=95, gt=0, le=100)
    ANOMALY_MEM_MINUTES: float = Field(default=5, gt=0)
    ANOMALY_OOM_KILLS: Positive = 3
    ANOMALY_OOM_MINUTES: float = Field(default=10, gt=0)
    ANOMALY_RPS: float = Field(default=20, gt=0)
    ANOMALY_RPS_MINUTES: float = Field(default=2, gt=0)
    ANOMALY_SPEND_USD_PER_HOUR: Decimal = Field(default=Decimal(5), gt=0)
    ANOMALY_SPEND_MINUTES: float = Field(default=30, gt=0)
    TOKEN_CHECK_MINUTES: float = Field(default=30, gt=0)
    # Traefik's Prometheus metrics (per-bot request rates); empty: that rule is off.
    TRAEFIK_METRICS_URL: str | None = "http://127.0.0.1:8082/metrics"
    RECONCILER: bool = True  # off: no automatic repairs (`storebot admin reconcile`)
    RECONCILE_INTERVAL_SECONDS: float = Field(default=60, gt=0)
    # The host's cgroup tree, read for CPU and memory of every bot in one sweep; empty:
    # ask Docker's stats API instead (slower; for a remote DOCKER_HOST).
    CGROUP_ROOT: Path | None = Path("/sys/fs/cgroup")

    # Plans and payments (Stripe is needed to sell, not by the admin CLI)
    PLANS_FILE: Path | None = None
    TERMS_FILE: Path | None = None
    CURRENCY: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    STRIPE_SECRET_KEY: SecretStr | None = None
    STRIPE_WEBHOOK_SECRET: SecretStr | None = None
    STRIPE_API_BASE: str = "https://api.stripe.com"

    # Traefik
    TRAEFIK_ENTRYPOINTS: str = "websecure"
    TRAEFIK_CERT_RESOLVER: str = "letsencrypt"
    TRAEFIK_PROBE_ENTRYPOINT: str = "probe"
    HEALTH_PROBE_URL: str = "http://127.0.0.1:8081"
    HEALTH_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0)
    DEPLOY_STALE_SECONDS: float = Field(default=300.0, gt=0)
    BOT_URL_SCHEME: str = "https"

    @field_validator("OPENROUTER_MODEL", "SUPPORT_EMAIL", "NULLCLAW_IMAGE", "BOT_NETWORK")
    @classmethod
    def _no_placeholder(cls, value: str) -> str:
        return _refuse_placeholder(value)

    @field_validator("OPENROUTER_API_KEY", "STOREBOT_SECRET_KEY")
    @classmethod
    def _secret_not_placeholder(cls, value: SecretStr) -> SecretStr:
        _refuse_placeholder(value.get_secret_value())
        return value

    @field_validator(
        "PLANS_FILE",
        "TERMS_FILE",
        "DOCKER_HOST",
        "OPS_CHAT_ID",
        "TRAEFIK_METRICS_URL",
        "CGROUP_ROOT",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "STOREBOT_BOT_TOKEN",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "TELEGRAM_WEBHOOK_SECRET",
    )
    @classmethod
    def _optional_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # empty in .env means "not set"
        _refuse_placeholder(value.get_secret_value())
        return value

    @field_validator("STOREBOT_SECRET_KEY")
    @classmethod
    def _fernet_key(cls, value: SecretStr) -> SecretStr:
        try:
            Fernet(value.get_secret_value().encode())
        except ValueError:
            raise ValueError(
                "must be a Fernet key (32 url-safe base64 bytes); generate one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`"
            ) from None
        return value

    @field_validator("BASE_DOMAIN")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = _refuse_placeholder(value).strip().lower().rstrip(".")
        if not _DNS_NAME.match(value):
            raise ValueError("must be a DNS name such as bots.mydomain.net (no scheme, no path)")
        return value

    @field_validator("SUPPORT_EMAIL")
    @classmethod
    def _email(cls, value: str) -> str:
        if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", value):
            raise ValueError("must be an e-mail address such as support@mydomain.net")
        return value

    @field_validator(
        "PUBLIC_BASE_URL",
        "OPENROUTER_BASE_URL",
        "LLM_METER_URL",
        "TELEGRAM_API_BASE",
        "HEALTH_PROBE_URL",
        "STRIPE_API_BASE",
    )
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(_refuse_placeholder(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://host:port/path")
        return value.rstrip("/")

    @field_validator("DEFAULT_MEM_LIMIT", "BOT_LOG_MAX_SIZE", "BOT_TMPFS_SIZE")
    @classmethod
    def _size(cls, value: str) -> str:
        # Docker reads 0 as "no limit": never let a typo remove a limit.
        if parse_memory(value) < 1024**2:
            raise ValueError(f"{value!r} is below 1m (and 0 would mean unlimited)")
        return value

    @field_validator("BOT_NETWORK_SUBNET")
    @classmethod
    def _subnet(cls, value: str) -> str:
        ipaddress.ip_network(value, strict=True)
        return value

    @field_validator("STOREBOT_INSTANCE")
    @classmethod
    def _instance(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,30}$", value):
            raise ValueError("must be 1-31 lowercase letters, digits or dashes")
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError(
                "must be sqlite:///path/to/file.db or postgresql+psycopg://user:pass@host/db"
            )
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("TERMS_FILE")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        secret = self.TELEGRAM_WEBHOOK_SECRET
        if self.TELEGRAM_MODE == "webhook" and (
            secret is None or not re.match(r"^[A-Za-z0-9_-]{16,256}$", secret.get_secret_value())
        ):
            raise ValueError(
                "TELEGRAM_MODE=webhook needs TELEGRAM_WEBHOOK_SECRET: 16-256 letters, digits, "
                "'_' or '-' (Telegram sends it back with every update)"
            )
        return self

    @field_validator("TOPUP_PRESETS_USD")
    @classmethod
    def _presets(cls, value: str) -> str:
        _usd_list(value, "amounts in USD such as 5,10,25")
        return value

    @field_validator("ADMIN_USER_IDS")
    @classmethod
    def _admin_ids(cls, value: str) -> str:
        if any(not re.fullmatch(r"-?\d+", v.strip()) for v in value.split(",") if v.strip()):
            raise ValueError("must be numeric Telegram user ids, comma-separated")
        return value

    @field_validator("BALANCE_ALERT_PERCENTS")
    @classmethod
    def _percents(cls, value: str) -> str:
        if any(not 0 < p < 100 for p in _usd_list(value, "percentages such as 50,20,5")):
            raise ValueError("each percentage must be between 0 and 100 (zero is always alerted)")
        return value

    @model_validator(mode="after")
    def _topup_range(self) -> Settings:
        if self.TOPUP_MIN_USD > self.TOPUP_MAX_USD:
            raise ValueError("TOPUP_MIN_USD must not exceed TOPUP_MAX_USD")
        outside = [
            p for p in self.topup_presets() if not self.TOPUP_MIN_USD <= p <= self.TOPUP_MAX_USD
        ]
        if outside:
            raise ValueError(
                f"TOPUP_PRESETS_USD has {', '.join(map(str, outside))} outside "
                f"TOPUP_MIN_USD..TOPUP_MAX_USD ({self.TOPUP_MIN_USD}..{self.TOPUP_MAX_USD})"
            )
        return self

    @model_validator(mode="after")
    def _burst_covers_rate(self) -> Settings:
        if self.DEFAULT_RATE_LIMIT_BURST < self.DEFAULT_RATE_LIMIT_RPS:
            raise ValueError("DEFAULT_RATE_LIMIT_BURST must be >= DEFAULT_RATE_LIMIT_RPS")
        return self

    # Derived values
    def bot_token(self) -> str:
        """The management bot's own token, or SettingsError saying how to get one."""
        if self.STOREBOT_BOT_TOKEN is None:
            raise SettingsError(
                "storebot run needs STOREBOT_BOT_TOKEN: the token of the management bot, "
                "from @BotFather"
            )
        return self.STOREBOT_BOT_TOKEN.get_secret_value()

    def stripe_keys(self) -> tuple[str, str]:
        """The Stripe secret key and webhook secret, or SettingsError naming what is missing."""
        key, hook = self.STRIPE_SECRET_KEY, self.STRIPE_WEBHOOK_SECRET
        missing = [
            n for n, v in (("STRIPE_SECRET_KEY", key), ("STRIPE_WEBHOOK_SECRET", hook)) if v is None
        ]
        if missing or key is None or hook is None:
            raise SettingsError(
                "selling needs these settings (environment or .env): " + ", ".join(missing)
            )
        return key.get_secret_value(), hook.get_secret_value()

    def admin_ids(self) -> frozenset[int]:
        return frozenset(int(v) for v in self.ADMIN_USER_IDS.split(",") if v.strip())

    def topup_presets(self) -> list[Decimal]:
        return _usd_list(self.TOPUP_PRESETS_USD, "")

    def alert_percents(self) -> list[int]:
        """Alert levels, highest first; 0 (an empty balance) is always the last."""
        return sorted(
            {int(p) for p in _usd_list(self.BALANCE_ALERT_PERCENTS, "")} | {0}, reverse=True
        )

    @property
    def entrypoints(self) -> list[str]:
        return [e.strip() for e in self.TRAEFIK_ENTRYPOINTS.split(",") if e.strip()]

    def meter_outside_bot_subnet(self) -> bool:
        """True when LLM_METER_URL names an IP outside BOT_NETWORK_SUBNET: then bots
        reach the meter only if it runs on another machine they may route to."""
        host = urlsplit(self.LLM_METER_URL).hostname or ""
        try:
            return ipaddress.ip_address(host) not in ipaddress.ip_network(self.BOT_NETWORK_SUBNET)
        except ValueError:
            return False

    def bot_url(self, bot_id: str) -> str:
        return f"{self.BOT_URL_SCHEME}://{bot_id}.{self.BASE_DOMAIN}/"

    def bot_host(self, bot_id: str) -> str:
        return f"{bot_id}.{self.BASE_DOMAIN}"


def _usd_list(value: str, expected: str) -> list[Decimal]:
    try:
        out = [Decimal(v.strip()) for v in value.split(",") if v.strip()]
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a list of {expected}") from None
    if not out or any(not v.is_finite() or v <= 0 for v in out):
        raise ValueError(f"{value!r} is not a list of {expected}")
    return out


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Build the settings or raise `SettingsError` naming every bad variable."""
    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = ["storebot cannot start: fix these settings (environment or .env):"]
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required and not set (see .env.example)"
        lines.append(f"  {name}: {msg}")
    return "\n".join(lines)
