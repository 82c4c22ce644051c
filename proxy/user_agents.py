"""One agent per end user: each user of a template agent gets their own copy of it, found again by a tag.

A template (PROXY_USER_AGENT_TEMPLATES) is a model whose memory must not be shared: the request's `user`
(else Open WebUI's `X-OpenWebUI-User-Id` header) names the end user, and the turn goes to that user's own
agent, made on first use. The key holder is trusted to name its users truly, as it is trusted with the
model itself.

The copy is made by `POST /v1/agents/` from the template's state: its memory blocks (as new blocks, so
that each user's memory is private), its tools (the same tools, by id), folders, tool secrets, model and
embedding configs, tool rules, compaction settings and system prompt; none of its messages (Letta starts
the copy as it starts any new agent). Not its sleep-time agent: Letta would make the copy's one as an
untagged agent sharing the user's blocks, listed and reachable like any other. Why not Letta's own export
and import: in Letta 0.16.8 an export without messages imports as an agent with no in-context messages
at all, whose first turn fails (a 500), and an import upserts the template's tools by name and re-creates
its MCP servers; a create is one request, one transaction, tags included, so no copy ever exists without
its tag. Letta identities would add an object per user and still not make two concurrent creates one.

The copy is found again without any local database, by its tag: `lop-user:` and an HMAC-SHA256, keyed
with PROXY_USER_AGENT_SECRET, of the template's id and the user, so that the user id never appears in
clear and every replica with the same settings finds the same agent. A second tag,
`lop-template:<template id>`, lists a template's users' agents. Later changes to the template are not
propagated: a user whose agent should start again from the template has their agent deleted.

Exactly one agent per (template, user): the find-or-create holds a lock per tag, taken from the app's
turn queue, so it is one at a time across workers and replicas when they share PROXY_REDIS_URL, and
within the process otherwise. Replicas without Redis may still race: the creator lists the tag again
after creating and keeps the oldest agent (by creation time, then id), deleting the others. Any replica
that sees several does the same, so all converge on one. The window left there: a replica whose listing
missed an older agent still being committed elsewhere (Letta dates an agent at the start of its
create's transaction) may use its own agent until the other replica deletes it.
"""

import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from proxy.errors import ProxyError, bad_request
from proxy.letta import Agent, Letta
from proxy.letta.agents import USER_AGENT_TAG
from proxy.letta.wire import AgentRecord
from proxy.settings import Settings
from proxy.turns import TurnQueue

log = logging.getLogger("proxy")

USER_HEADER = "x-openwebui-user-id"  # Open WebUI's, with ENABLE_FORWARD_USER_INFO_HEADERS=true
TEMPLATE_TAG = "lop-template:"
DIGEST_HEX = 32  # 128 bits of the HMAC in the tag; 12 hex digits of it in the agent's name
MAX_REMEMBERED = 10_000
STATE_RELATIONS = ("agent.blocks", "agent.tools", "agent.sources", "agent.secrets")
COPIED_FIELDS = (
    "agent_type",
    "system",
    "llm_config",
    "embedding_config",
    "tool_rules",
    "compaction_settings",
    "response_format",
    "description",
    "metadata",
    "timezone",
    "message_buffer_autoclear",
    "max_files_open",
    "per_file_view_window_char_limit",
)
BLOCK_FIELDS = ("label", "value", "limit", "description", "read_only", "metadata")
NOT_IN_A_NAME = re.compile(r"[^\w '\-]")  # what Letta refuses in an agent's name


def end_user(user: str | None, headers: Mapping[str, str] | None) -> str:
    """Who the end user is: the request's `user`, else the Open WebUI header; neither is a 400."""
    for candidate in (user, (headers or {}).get(USER_HEADER)):
        if candidate and candidate.strip():
            return candidate
    raise bad_request(
        "This model gives each end user their own agent: name the user in `user` "
        "(or in the X-OpenWebUI-User-Id header).",
        param="user",
        code="user_required",
    )


def user_tag(secret: bytes, template_id: str, user: str) -> str:
    """The tag of this user's agent of this template; the user id cannot be read back from it."""
    message = b"%s\0%s" % (template_id.encode(), user.encode("utf-8", "surrogatepass"))
    return USER_AGENT_TAG + hmac.new(secret, message, hashlib.sha256).hexdigest()[:DIGEST_HEX]


def agent_name(template_name: str, tag: str) -> str:
    """A name for people browsing Letta: the template's, and the start of the user's hash."""
    return f"{NOT_IN_A_NAME.sub('-', template_name)}-user-{tag.removeprefix(USER_AGENT_TAG)[:12]}"


def copy_body(state: Mapping[str, Any], name: str, tags: list[str]) -> dict[str, Any]:
    """The create request for a copy of the agent whose state this is, without its messages.

    Letta adds no tools or tool rules of its own: the template's, as they are, already hold them.
    """
    body = {field: state[field] for field in COPIED_FIELDS if state.get(field) is not None}
    return {
        **body,
        "name": name,
        "tags": tags,
        "memory_blocks": [
            {field: block[field] for field in BLOCK_FIELDS if block.get(field) is not None}
            for block in state.get("blocks") or []
        ],
        "tool_ids": [tool["id"] for tool in state.get("tools") or []],
        "folder_ids": [folder["id"] for folder in state.get("sources") or []],
        "secrets": {secret["key"]: secret.get("value") or "" for secret in state.get("secrets") or []},
        "include_base_tools": False,
        "include_base_tool_rules": False,
    }


def _age(agent: AgentRecord) -> tuple[float, str]:
    """Oldest first, every replica agreeing: by creation time, then by id."""
    return (agent.created_at.timestamp() if agent.created_at else math.inf, agent.id)


class UserAgents:
    """Finds or makes the end user's own agent of a template, remembering it for the agent cache period."""

    def __init__(self, letta: Letta, settings: Settings, locks: TurnQueue) -> None:
        self._letta = letta
        self._templates = frozenset(settings.proxy_user_agent_templates)
        secret = settings.proxy_user_agent_secret
        self._secret = secret.get_secret_value().encode() if secret else b""
        self._seconds = settings.proxy_agent_cache_seconds
        self._known: dict[str, tuple[AgentRecord, float]] = {}
        self._locks = locks  # one find-or-create per tag at a time

    def is_template(self, agent: Agent) -> bool:
        return agent.id in self._templates or agent.name in self._templates

    async def agent_for(self, template: Agent, user: str) -> Agent:
        """The user's agent, under the template's name: what the client asked for, and no user hash in
        logs or metrics. Its id is the one Letta, the turn queue and conversations see."""
        tag = user_tag(self._secret, template.id, user)
        own = self._recall(tag)
        if own is None:
            release = await self._locks.enter(f"new-user:{tag}")
            try:
                own = self._recall(tag) or await self._find_or_make(template, tag)
                self._remember(tag, own)
            finally:
                release()
        return Agent(own.id, template.name, template.created, own.agent_type or template.type)

    async def _find_or_make(self, template: Agent, tag: str) -> AgentRecord:
        found = await self._letta.tagged(tag)
        if not found:
            state = await self._letta.agent_state(template.id, STATE_RELATIONS)
            body = copy_body(state, agent_name(template.name, tag), [tag, TEMPLATE_TAG + template.id])
            await self._letta.create_agent(body)
            log.info("made the agent of a new end user of template %s", template.id)
            found = await self._letta.tagged(tag)
        if not found:
            raise ProxyError(
                502,
                "The Letta server made the user's agent but does not list it.",
                type="server_error",
                code="upstream_error",
            )
        keep, *extra = sorted(found, key=_age)
        for agent in extra:  # made at the same time by another replica: the oldest stays
            await self._letta.delete_agent(agent.id)
            log.warning("deleted agent %s: a second agent of one user of template %s", agent.id, template.id)
        return keep

    def _recall(self, tag: str) -> AgentRecord | None:
        known = self._known.get(tag)
        if known is None or time.monotonic() >= known[1]:
            return None
        return known[0]

    def _remember(self, tag: str, agent: AgentRecord) -> None:
        self._known.pop(tag, None)
        self._known[tag] = (agent, time.monotonic() + self._seconds)
        if len(self._known) > MAX_REMEMBERED:
            del self._known[next(iter(self._known))]  # the least recently found
