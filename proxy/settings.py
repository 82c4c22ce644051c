"""Every setting of the proxy, read once from the environment (and `.env`)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ToolCallMode = Literal["openai", "reasoning", "drop"]
ApprovalMode = Literal["deny", "client"]
ModelScope = Literal["request", "global", "session"]
SystemMessages = Literal["drop", "forward"]


def _split_commas(value: object) -> object:
    """Lists come as `a,b,c` in the environment, as people write them, not as JSON."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Field names are the environment variables, lower-cased (`letta_base_url` is `LETTA_BASE_URL`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    letta_base_url: str = Field(
        "http://localhost:8283", pattern=r"^https?://", description="The Letta server's base URL."
    )
    letta_api_key: SecretStr | None = Field(
        None, description="Token sent to Letta (Letta Cloud or a secured server)."
    )
    letta_project: str | None = Field(None, description="Letta Cloud project, sent as the X-Project header.")
    letta_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds Letta may stay silent: one read, the gap between stream events, or a whole "
        "agent listing.",
    )
    letta_connect_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries, with backoff, of a turn whose connection to Letta failed before sending.",
    )
    proxy_host: str = Field("0.0.0.0", description="Address the proxy listens on.")
    proxy_port: int = Field(8080, ge=1, le=65535, description="Port the proxy listens on.")
    proxy_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted client keys, comma-separated. None: a key is generated."
    )
    proxy_api_key_file: Path = Field(
        Path("proxy-api-key.json"),
        description="Where the generated key is kept when PROXY_API_KEYS is unset.",
    )
    proxy_default_agent: str | None = Field(
        None, description="Agent used when a request names no model; unset: the oldest agent the key may use."
    )
    proxy_agents: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allowlist of agent names or ids to expose, comma-separated; empty: all.",
    )
    proxy_model_scope: ModelScope = Field(
        "request",
        description="request: model applies to its request; global: it also becomes the key's default; "
        "session: it becomes the default of the request's `user`.",
    )
    proxy_redis_url: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="Redis shared by workers and replicas: model-scope state, chat pins, each agent's turn "
        "lock and Idempotency-Key outcomes; unset: all in this process's memory.",
    )
    proxy_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server worker processes; raise it towards the cores when the proxy's CPU is the "
        "bottleneck (with PROXY_REDIS_URL, or agents' turns are only queued per worker).",
    )
    proxy_lock_lease_seconds: float = Field(
        10.0,
        ge=1,
        description="With Redis: a crashed process's hold on an agent lapses within this (live ones renew).",
    )
    proxy_idempotency_seconds: float = Field(
        86_400,
        gt=0,
        description="How long a request's outcome is kept for repeats with the same Idempotency-Key.",
    )
    proxy_idempotency_max_entries: int = Field(
        1000, gt=0, description="Most outcomes kept for Idempotency-Key in memory (without Redis)."
    )
    proxy_session_max_entries: int = Field(
        10_000, gt=0, description="Most remembered model choices, per key."
    )
    proxy_session_idle_seconds: float = Field(
        86_400, gt=0, description="A remembered model choice unused this long is forgotten."
    )
    proxy_user_agent_templates: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Template agents (names or ids, comma-separated): each end user of one gets their own "
        "copy of it, made on first use. Every key that may use a template is trusted to name its users.",
    )
    proxy_user_agent_secret: SecretStr | None = Field(
        None,
        description="Key of the hash that names a user's agent (its tag); the same on every replica, never "
        "changed. Unset: the hash still hides the user id, but anyone who knows the template id can test a "
        "guessed user against it.",
    )
    proxy_queue_timeout: float = Field(
        120.0, gt=0, description="How long a turn may wait for its agent's previous turns before a 429."
    )
    proxy_turn_timeout_seconds: float = Field(
        900.0, gt=0, description="Seconds one turn may take in Letta in all, however steadily Letta answers."
    )
    proxy_max_upstream_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="Largest answer read from Letta: a whole turn or a page of agents.",
    )
    proxy_agent_cache_seconds: float = Field(5.0, ge=0, description="How long the agent list is reused.")
    proxy_max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    proxy_body_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest time a request body may take to arrive, then a 408."
    )
    proxy_max_connections: int = Field(
        4096, ge=16, description="Most open client connections; beyond it new ones wait in the listen queue."
    )
    proxy_header_timeout_seconds: float = Field(
        30.0,
        ge=1,
        description="A connection that sends no complete request head this long (new or idle) is closed.",
    )
    proxy_max_messages: int = Field(5000, gt=0, description="Most messages one request may carry.")
    proxy_max_text_chars: int = Field(
        1_000_000, gt=0, description="Most characters of text forwarded to the agent in one request."
    )
    proxy_max_image_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Largest image, decoded, in bytes.")
    proxy_image_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts whose http(s) image URLs are passed to Letta, which fetches them; "
        "comma-separated; empty: only data URLs.",
    )
    proxy_system_messages: SystemMessages = Field(
        "drop",
        description="The client's system/developer messages and Responses instructions: dropped (Letta owns "
        "the system prompt) or forwarded as a marked block before the user text.",
    )
    proxy_keepalive_seconds: float = Field(
        15.0, gt=0, description="Idle seconds after which a stream gets an SSE comment, so no one cuts it."
    )
    proxy_stall_seconds: float = Field(
        30.0,
        gt=0,
        description="A stream whose client takes no bytes for this long is dropped: its run cancelled, "
        "its agent freed for the next turn.",
    )
    proxy_shutdown_grace_seconds: int = Field(
        30, ge=0, description="On SIGTERM, how long open requests may take to finish before they are cut."
    )
    proxy_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated ('*' for any); empty: CORS off.",
    )
    proxy_tool_calls: ToolCallMode = Field(
        "reasoning",
        description="How the agent's own tool calls (which Letta ran) are shown: reasoning text, drop, or "
        "openai tool_calls (only in requests without tools).",
    )
    proxy_client_tools: Literal["forward", "ignore"] = Field(
        "forward",
        description="A request's tools reach the agent as client tools (forward), or are ignored (ignore).",
    )
    proxy_client_tools_unsupported: Literal["ignore", "reject"] = Field(
        "ignore",
        description="A request with tools for an agent type that cannot call client tools: "
        "answered without them (ignore) or refused with a 400 (reject).",
    )
    proxy_tool_approvals: ApprovalMode = Field(
        "deny",
        description="The agent's own tools that need approval: denied at once, the agent going on (deny), "
        "or shown to the client as tool_calls whose tool message approves or denies (client).",
    )
    proxy_task_requests: Literal["skip", "forward"] = Field(
        "skip",
        description="Open WebUI's background tasks (titles, tags...): answered here (skip) or sent on.",
    )
    proxy_openwebui_chat_id: bool = Field(
        True,
        description="Open WebUI's X-OpenWebUI-Chat-Id pins one Letta conversation per chat, as "
        "X-Letta-Chat-Key does (where Letta has conversations); false: its chats share the agent's history.",
    )
    proxy_reasoning: bool = Field(
        False, description="Send the agent's reasoning as reasoning_content deltas."
    )
    proxy_log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level."
    )
    proxy_log_format: Literal["text", "json"] = Field(
        "text", description="text: readable lines; json: one JSON object per line, for log collectors."
    )

    @field_validator(
        "letta_api_key",
        "letta_project",
        "proxy_default_agent",
        "proxy_redis_url",
        "proxy_user_agent_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`LETTA_API_KEY=` (a line left blank in .env) means no key, not an empty one."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "proxy_api_keys",
        "proxy_agents",
        "proxy_cors_origins",
        "proxy_image_url_hosts",
        "proxy_user_agent_templates",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("proxy_image_url_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [host.lower() for host in value]

    @field_validator(
        "proxy_log_level",
        "proxy_log_format",
        "proxy_tool_calls",
        "proxy_model_scope",
        "proxy_task_requests",
        "proxy_system_messages",
        "proxy_client_tools",
        "proxy_client_tools_unsupported",
        "proxy_tool_approvals",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def describe_error(error: ValidationError) -> str:
    """One line per bad variable, named as the user wrote it, without the value (it may be a secret)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        lines.append(f"invalid setting {name}: {item['msg']}")
    return "\n".join(lines)
