"""Pure translation of a chat request into Letta messages, with no I/O: the new user turns become Letta
user messages, within the request's limits. The answer side is encode.py.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from proxy.chat import protocol
from proxy.errors import bad_request
from proxy.letta.wire import MessageCreateParam
from proxy.settings import Settings, SystemMessages

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may carry, beyond the body size the server enforces."""

    messages: int = 5000
    text_chars: int = 1_000_000
    image_bytes: int = 5 * 1024 * 1024
    image_url_hosts: frozenset[str] = frozenset()  # hosts Letta may fetch images from; none: data URLs only
    system_messages: SystemMessages = "drop"

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls(
            settings.proxy_max_messages,
            settings.proxy_max_text_chars,
            settings.proxy_max_image_bytes,
            frozenset(settings.proxy_image_url_hosts),
            settings.proxy_system_messages,
        )


def letta_messages(
    request: protocol.ChatCompletionRequest, limits: Limits = Limits(), *, results_given: bool = False
) -> list[MessageCreateParam]:
    """The user turns after the last assistant message: the only part Letta has not seen yet.

    There may be none when the request brings tool results (`results_given`), which are new too.
    """
    if request.n is not None and request.n > 1:
        raise bad_request("Only n=1 is supported: a Letta agent gives one answer per turn.", param="n")
    if len(request.messages) > limits.messages:
        raise bad_request(
            f"Too many messages: {len(request.messages)}, at most {limits.messages} are accepted.",
            param="messages",
            code="too_many_messages",
        )
    last_assistant = max((i for i, m in enumerate(request.messages) if m.role == "assistant"), default=-1)
    turns: list[MessageCreateParam] = [
        _user_turn(i, message, limits, request.user)
        for i, message in enumerate(request.messages)
        if i > last_assistant and message.role == "user"
    ]
    if not turns and not results_given:
        raise bad_request(
            "No user message after the last assistant message: there is nothing new to send to the agent.",
            param="messages",
        )
    if limits.system_messages == "forward" and turns:
        system = [
            _system_text(i, message)
            for i, message in enumerate(request.messages)
            if i > last_assistant and message.role in ("system", "developer")
        ]
        turns[0] = with_system_block(turns[0], system)
    if sum(text_length(turn["content"]) for turn in turns) > limits.text_chars:
        raise bad_request(
            f"The new user messages hold more than {limits.text_chars} characters of text.",
            param="messages",
            code="message_too_long",
        )
    return turns


def _user_turn(
    index: int, message: protocol.ChatMessage, limits: Limits, user: str | None
) -> MessageCreateParam:
    """A Letta user message; the speaker's name (the message's, else the request's `user`) goes with it."""
    turn: MessageCreateParam = {"role": "user", "content": _user_content(index, message, limits)}
    if name := sender_name(message.name or user):
        turn["name"] = name
    return turn


def sender_name(name: str | None) -> str | None:
    """A name every LLM provider behind Letta accepts: letters, digits, `_` and `-`, at most 64."""
    cleaned = _NAME_UNSAFE.sub("_", name or "").strip("_")[:64]
    return cleaned or None


def _system_text(index: int, message: protocol.ChatMessage) -> str:
    content = message.content
    if isinstance(content, str) or content is None:
        return content or ""
    if any(part.type != "text" for part in content):
        raise bad_request(
            f"messages[{index}] is a {message.role} message with non-text parts: only text can be forwarded.",
            param=f"messages[{index}].content",
        )
    return "\n".join(part.text or "" for part in content)


SYSTEM_BLOCK = "[System instructions from the client]\n{text}\n[End of the client's system instructions]"


def with_system_block(turn: MessageCreateParam, texts: Iterable[str]) -> MessageCreateParam:
    """The client's system text as a marked block before the user text (PROXY_SYSTEM_MESSAGES=forward)."""
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        return turn
    block = SYSTEM_BLOCK.format(text=text)
    content = turn["content"]
    if isinstance(content, str):
        return {**turn, "content": f"{block}\n\n{content}"}
    return {**turn, "content": [{"type": "text", "text": block}, *cast(list[Any], content)]}


def text_length(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(part.get("text", "")) for part in cast(list[dict[str, Any]], content))


def _user_content(index: int, message: protocol.ChatMessage, limits: Limits) -> str | list[Any]:
    """A plain string when the turn is only text (what Letta shows best), else Letta content parts."""
    content = message.content
    if isinstance(content, str) or content is None:
        text = content or ""
        if not text.strip():
            raise bad_request(f"messages[{index}] has empty content.", param=f"messages[{index}].content")
        return text
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if part.type == "text" and part.text is not None:
            if parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += "\n" + part.text
            else:
                parts.append({"type": "text", "text": part.text})
        elif part.type == "image_url" and part.image_url is not None:
            parts.append(image_part(part.image_url.url, f"{where}.image_url.url", limits))
        else:
            raise bad_request(
                f"Unsupported content part of type '{part.type}' in {where}: send text or image_url parts.",
                param=f"{where}.type",
            )
    if not parts:
        raise bad_request(f"messages[{index}] has empty content.", param=f"messages[{index}].content")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return cast(str, parts[0]["text"])
    return parts


def image_part(url: str, param: str, limits: Limits) -> dict[str, Any]:
    """A Letta image: a base64 data URL, or an http(s) URL on an allowed host, which Letta fetches itself.

    Letta would fetch whatever URL a client names, so remote images are refused unless their host is one
    the deployment listed (PROXY_IMAGE_URL_HOSTS).
    """
    if url.startswith(("http://", "https://")) and _allowed_host(url, limits.image_url_hosts):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, comma, data = url.partition(",")
    media_type, _, encoding = header.removeprefix("data:").partition(";")
    if not (url.startswith("data:") and comma and encoding == "base64" and media_type.startswith("image/")):
        allowed = " or http(s) URLs on the hosts the proxy allows" if limits.image_url_hosts else ""
        raise bad_request(
            f"Unsupported image URL in {param}: "
            f"only base64 data URLs (data:image/...;base64,...){allowed} are accepted.",
            param=param,
        )
    if len(data) * 3 // 4 > limits.image_bytes:
        raise bad_request(
            f"The image in {param} is larger than {limits.image_bytes} bytes.",
            param=param,
            code="image_too_large",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _allowed_host(url: str, hosts: frozenset[str]) -> bool:
    """Exact host names only, and no credentials in the URL (they would reach Letta's fetch)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is None and (parts.hostname or "") in hosts
