"""Settings: command-line flags win over ``SIDECAR_*`` environment variables, which win over a YAML file.

The YAML file (``SIDECAR_CONFIG=path`` or ``--config path``) uses the same names in lower case. Unknown
names in the file are refused, so a typo cannot silently leave a default in force. Every problem is turned
into a one-line message that names the setting and what it accepts; a secret's value is never echoed.

Two mistakes are corrected or pointed at rather than refused (``load_settings(warnings=...)`` collects the
lines): an unknown ``SIDECAR_*`` environment variable (the environment is shared with everything else a
process runs, so it is not refused, but named, with the closest setting), and an upstream URL ending in
``/v1`` - the habit of ``OPENAI_BASE_URL`` - which would send every request to ``/v1/v1/...``: LiteLLM serves
its routes at its root, so the sidecar drops that ``/v1``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from sidecar.litellm.levels import PHANTOM_AFTER
from sidecar.litellm.policy import Policy

LogLevel = Literal["debug", "info", "warning", "error"]

SECRET_FIELDS = frozenset({"admin_key"})


class SettingsError(Exception):
    """A setting is missing or invalid; the message is meant for the operator, one line each."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIDECAR_", extra="forbid", frozen=True)

    upstream_url: str = "http://127.0.0.1:4000"
    admin_key: SecretStr | None = None
    policy: Policy = Policy.ALL
    host: str = "127.0.0.1"
    port: int = Field(default=4001, ge=1, le=65535)

    # How long the admin's model catalog and each key's access scope are reused, in seconds.
    catalog_ttl: float = Field(default=60.0, ge=0)
    scope_ttl: float = Field(default=60.0, ge=0)
    # How long a caller's budget state (over budget or not, at which level) is reused, in seconds: a
    # budget LiteLLM resets, raises or spends shows in discovery at most this much later.
    budget_ttl: float = Field(default=10.0, ge=0)
    # How long LiteLLM's budget refusal must go on while its records show that level within budget before
    # the sidecar calls it a phantom, in seconds: LiteLLM writes spend to its database in batches, so right
    # after a caller crosses its budget the records lag for seconds (its proxy_batch_write_at, 10 s default).
    # ``doctor`` waits as long by default (its --settle): both call a new phantom alike.
    phantom_after: float = Field(default=PHANTOM_AFTER, ge=0)

    # Upstream timeouts in seconds. read_timeout bounds the silence between two chunks of a pass-through
    # answer (a slow model's stream), not the whole answer.
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0)
    admin_timeout: float = Field(default=10.0, gt=0)
    # A global bound on the admin look-ups made for callers (/key/info, /team/info, /user/info,
    # /customer/info, /organization/info): at most admin_lookup_rate a second on average (bursts of as
    # many) and admin_lookup_concurrency at once. Past it, a caller gets LiteLLM's own answer; however
    # many callers come, LiteLLM's admin API and its database see no more than this from the sidecar.
    admin_lookup_rate: float = Field(default=50.0, gt=0)
    admin_lookup_concurrency: int = Field(default=10, ge=1)

    # Model names the operator declares free in addition to those priced at 0 in LiteLLM's config.
    free_models: Annotated[tuple[str, ...], NoDecode] = ()
    # The headers LiteLLM's general_settings.user_header_mappings (role "customer") or user_header_name name,
    # in that order: LiteLLM reads the end user from them after x-litellm-customer-id and
    # x-litellm-end-user-id, and so must the sidecar, or all end users of one key share one budget state.
    end_user_headers: Annotated[tuple[str, ...], NoDecode] = ()
    # Answer /v1/models/{id} from the caller's own model list (LiteLLM refuses it to ordinary keys).
    retrieve_from_list: bool = True

    # The most bytes a request line and headers from a caller may take (more: 431), and the status line and
    # headers of an answer from LiteLLM (more: 502).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    # WebSockets passed through (realtime, Responses): the largest message either way, in bytes (a bigger
    # one closes both sides with 1009; OpenAI's realtime API takes audio in messages of up to 15 MiB), and
    # how long a socket may carry no message either way before both sides are closed (1001), in seconds;
    # whether callers may negotiate permessage-deflate (off: a small compressed message inflates to
    # ws_max_message_bytes on the shared event loop, and each socket's compression state costs memory).
    ws_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    ws_idle_timeout: float = Field(default=600.0, gt=0)
    ws_per_message_deflate: bool = False

    log_level: LogLevel = "info"

    # Descriptors: at start each process raises its soft RLIMIT_NOFILE to the hard limit, or to
    # max_open_files if lower. Caller connections held at once per process: max_connections, by default
    # what the descriptors allow with a reserve kept ((limit - reserve) / 2: a stream holds two). Past it a
    # request gets 503 with Retry-After; /healthz, /readyz and /sidecar/metrics are always answered.
    max_open_files: int | None = Field(default=None, ge=256)
    max_connections: int | None = Field(default=None, ge=1)

    # Opt-in: paid model name (or "*") -> free model. A chat/completion/Responses/Messages request for a
    # mapped model that LiteLLM refuses for a spent budget is sent again with the free model (fallback.py).
    # JSON in SIDECAR_FALLBACK, e.g. {"*": "free-model"}.
    fallback: dict[str, str] = Field(default_factory=dict)

    # Worker processes sharing the listening socket; "auto": one per CPU this process may run on. Each
    # worker has its own caches and connection pools; metrics add up across them.
    workers: int = Field(default=1, ge=1, le=256)

    # Python's full garbage collections (each holds the event loop for a time that grows with the open
    # streams: ~300 ms at 9,700) run at most once every gc_interval seconds; 0: as often as CPython's own
    # rule has them (proxy/collector.py).
    gc_interval: float = Field(default=60.0, ge=0)

    # Shutdown on SIGTERM/SIGINT: readiness goes false at once; requests are still served for drain_delay
    # seconds (time for a load balancer to stop sending any), then in-flight requests and streams get up to
    # shutdown_timeout seconds to finish before they are cut.
    drain_delay: float = Field(default=0.0, ge=0)
    shutdown_timeout: float = Field(default=30.0, gt=0)

    @field_validator("upstream_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:4000")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return _without_v1(value.rstrip("/"))

    @field_validator("policy", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("fallback")
    @classmethod
    def _fallback_names(cls, value: dict[str, str]) -> dict[str, str]:
        for paid, free in value.items():
            if not paid.strip() or not free.strip() or free == "*":
                raise ValueError('maps model names (or "*") to a free model name, e.g. {"*": "free-model"}')
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return len(os.sched_getaffinity(0))
        return value

    @field_validator("free_models", "end_user_headers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _admin_key_needed(self) -> Settings:
        if self.policy is not Policy.BLOCKED and not (self.admin_key and self.admin_key.get_secret_value()):
            raise ValueError(
                f"admin_key is required when policy is '{self.policy}' "
                "(set SIDECAR_ADMIN_KEY, or policy 'blocked' to never rescue)"
            )
        return self

    @property
    def upstream_host(self) -> str:
        """The upstream's host[:port], as sent in the Host header."""
        return urlsplit(self.upstream_url).netloc


def _without_v1(url: str) -> str:
    return url.removesuffix("/v1") if urlsplit(url).path.rstrip("/").endswith("/v1") else url


# The environment variables the sidecar reads: one per setting, and the YAML file's path.
ENVIRONMENT = frozenset({f"SIDECAR_{name.upper()}" for name in Settings.model_fields} | {"SIDECAR_CONFIG"})


def environment_warnings(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``SIDECAR_*`` variable the sidecar does not read, naming the closest one it does."""
    found = []
    for name in sorted(environ):  # names are read case-insensitively, as pydantic-settings reads them
        if name.upper().startswith("SIDECAR_") and name.upper() not in ENVIRONMENT:
            close = difflib.get_close_matches(name.upper(), ENVIRONMENT, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else " (no setting has a name close to it)"
            found.append(f"unknown environment variable {name} is ignored{hint}")
    return found


class _YamlSource(PydanticBaseSettingsSource):
    """Lowest-priority source: the keys of a YAML mapping, same names as the fields."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: must be a mapping of setting names to values")
    return {str(key).lower(): value for key, value in data.items()}


def _describe(error: Any) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("literal_error", "enum"):
        allowed = error.get("ctx", {}).get("expected", "")
        message = f"allowed values are {allowed}"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(Settings.model_fields))
        return f"unknown setting '{name}' (known settings: {known})"
    shown = "" if name in SECRET_FIELDS or name == "settings" else f" (got {error.get('input')!r})"
    if name == "settings":
        return f"invalid settings: {message}"
    return f"invalid setting '{name}' (SIDECAR_{name.upper()}): {message}{shown}"


def load_settings(
    config_file: str | None = None, warnings: list[str] | None = None, **overrides: Any
) -> Settings:
    """Build the settings from flags (``overrides``), the environment and the YAML file, in that order;
    ``warnings`` receives a line for each mistake corrected or ignored rather than refused."""
    path = config_file or os.environ.get("SIDECAR_CONFIG") or None
    file_data = _read_yaml(path) if path else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    if warnings is not None:
        warnings += environment_warnings(os.environ)
        url = (
            given.get("upstream_url")
            or os.environ.get("SIDECAR_UPSTREAM_URL")
            or file_data.get("upstream_url")
        )
        if isinstance(url, str) and _without_v1(url.rstrip("/")) != url.rstrip("/"):
            warnings.append(
                f"upstream_url {url} ends in /v1: the sidecar uses {_without_v1(url.rstrip('/'))} "
                "(LiteLLM serves its routes at its root: a client's base URL ends in /v1, the sidecar's "
                "upstream does not)"
            )

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, file_data))

    try:
        layered = _Layered(**given)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error) for error in exc.errors())) from None
    except _SourceError as exc:
        raise SettingsError(str(exc).splitlines()[0]) from None
    return Settings.model_construct(**dict(layered))
