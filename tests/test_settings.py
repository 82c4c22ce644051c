"""settings.py and start-up: variables as users write them, and one clear line for a bad one."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
from pydantic import ValidationError

from proxy.settings import Settings, describe_error

ROOT = Path(__file__).parents[1]


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    """PROXY_API_KEYS and PROXY_AGENTS are plain comma lists in the environment."""
    monkeypatch.setenv("PROXY_API_KEYS", "sk-1, sk-2,")
    monkeypatch.setenv("PROXY_AGENTS", "support-bot,agent-123")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [key.get_secret_value() for key in settings.proxy_api_keys] == ["sk-1", "sk-2"]
    assert settings.proxy_agents == ["support-bot", "agent-123"]


def test_defaults_match_the_documentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, the proxy talks to a local Letta and listens on 0.0.0.0:8080."""
    for name in list(os.environ):
        if name.startswith(("LETTA_", "PROXY_")):
            monkeypatch.delenv(name)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.letta_base_url, settings.proxy_host, settings.proxy_port) == (
        "http://localhost:8283",
        "0.0.0.0",
        8080,
    )
    assert settings.proxy_api_keys == [] and settings.proxy_tool_calls == "reasoning"


def test_a_bad_value_is_described_by_its_variable_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message names PROXY_PORT and does not echo what was given (it could be a secret)."""
    monkeypatch.setenv("PROXY_PORT", "secret-looking-value")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = describe_error(caught.value)
    assert message.startswith("invalid setting PROXY_PORT:") and "secret-looking-value" not in message


def test_start_up_with_a_bad_value_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """A real start of the command fails fast with one readable line."""
    env = {**os.environ, "PROXY_TOOL_CALLS": "sometimes", "PROXY_API_KEY_FILE": str(tmp_path / "k.json")}
    done = subprocess.run(
        [sys.executable, "-m", "proxy"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("invalid setting PROXY_TOOL_CALLS:") and "Traceback" not in done.stderr


def test_every_setting_is_documented_in_env_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """.env.example names every variable, and as written it is a valid configuration."""
    text = (ROOT / ".env.example").read_text()
    assert [name for name in Settings.model_fields if name.upper() not in text] == []
    monkeypatch.chdir(ROOT)
    example = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert example.proxy_port == 8080


def test_a_blank_optional_value_is_unset_not_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`LETTA_API_KEY=` left blank in .env means no token, not an empty one sent to Letta."""
    for name in ("LETTA_API_KEY", "LETTA_PROJECT", "PROXY_DEFAULT_AGENT", "PROXY_REDIS_URL"):
        monkeypatch.setenv(name, " ")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.letta_api_key is None and settings.letta_project is None
    assert settings.proxy_default_agent is None and settings.proxy_redis_url is None


CHOICES = {
    name: get_args(field.annotation)
    for name, field in Settings.model_fields.items()
    if get_origin(field.annotation) is Literal
}


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_every_choice_setting_accepts_any_case(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`PROXY_LOG_FORMAT=JSON` or `Text` works as `json` or `text` does, for every setting with choices."""
    value = CHOICES[name][-1]
    monkeypatch.setenv(name.upper(), value.title())
    assert getattr(Settings(_env_file=None), name) == value  # type: ignore[call-arg]


def test_the_choice_settings_are_found() -> None:
    """The case test above covers the settings with choices, log format included."""
    assert {"proxy_log_format", "proxy_log_level", "proxy_tool_calls"} <= set(CHOICES)
