"""Which agent a request goes to: the model it names, else the agent its scope last chose, else the default.

The default is PROXY_DEFAULT_AGENT, else the oldest agent the key may use: creating an agent never
changes where a request without `model` goes. A name two agents share is ambiguous: such agents are
listed and reached by id, and the shared name is refused with the ids to choose from.

With PROXY_MODEL_SCOPE `global` or `session`, naming a model also makes that agent the default for later
requests without one: for the whole key (`global`), or for one `user` of it (`session`). Where Letta has
conversations, an `X-Letta-Chat-Key` pins one, so one agent can hold many separate chats; Open WebUI's own
`X-OpenWebUI-Chat-Id` does the same unless turned off, so each of its chats is a conversation with no
setting on its side. That memory is kept per client key, so one tenant can never steer or see another's.

A template agent (PROXY_USER_AGENT_TEMPLATES) is never talked to itself: the request goes to its end
user's own agent (proxy/user_agents.py), whatever API asked.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

import msgspec

from proxy.auth import Client
from proxy.chat import protocol
from proxy.errors import ProxyError, bad_request, model_not_found
from proxy.letta import Agent, Letta
from proxy.sessions import SessionStore, SessionStoreError
from proxy.settings import ModelScope
from proxy.tasks import detect_task
from proxy.user_agents import UserAgents, end_user

MAX_CHAT_KEY = 256
CHAT_KEY_HEADER = "x-letta-chat-key"
OPENWEBUI_CHAT_HEADER = "x-openwebui-chat-id"  # sent with ENABLE_FORWARD_USER_INFO_HEADERS=true
OPENWEBUI_USER_HEADER = "x-openwebui-user-name"


class AgentChoice:
    def __init__(
        self,
        letta: Letta,
        store: SessionStore,
        scope: ModelScope,
        default: str | None,
        openwebui_chats: bool = True,
        user_agents: UserAgents | None = None,
    ) -> None:
        self._letta = letta
        self._store = store
        self._scope = scope
        self._default = default
        self._openwebui_chats = openwebui_chats
        self._user_agents = user_agents

    async def visible(self, client: Client, *, fresh: bool = False) -> list[Agent]:
        """The exposed agents this client's key may use; `fresh` for a model the cached list lacks."""
        agents = await self._letta.agents(fresh=fresh)
        return [agent for agent in agents if client.may_use(agent.id, agent.name)]

    async def models(self, client: Client) -> list[tuple[str, Agent]]:
        """The key's agents under their model ids: the name, or the id where agents share a name."""
        agents = await self.visible(client)
        names = Counter(agent.name for agent in agents)
        return [(agent.name if names[agent.name] == 1 else agent.id, agent) for agent in agents]

    async def resolve(
        self, client: Client, model: str | None, user: str | None, headers: Mapping[str, str] | None = None
    ) -> Agent:
        """The agent the turn goes to: for a template, its end user's own agent (named by `user`, else by
        the request's `headers`)."""
        agent = await self.named(client, model, user)
        if self._user_agents is not None and self._user_agents.is_template(agent):
            return await self._user_agents.agent_for(agent, end_user(user, headers))
        return agent

    async def named(self, client: Client, model: str | None, user: str | None) -> Agent:
        """The agent the request names, or its default (a template itself, not a user's copy). An agent
        outside the key's scope is reported as unknown, so names do not leak."""
        agents = await self.visible(client)
        session = self._session_key(user)
        if model:
            agent = _find(agents, model) or _find(await self.visible(client, fresh=True), model)
            if agent is None:
                raise model_not_found(model)
            if session is not None:
                await self._remember(client, session, agent.id)
            return agent
        if session is not None and (chosen := _find(agents, await self._recall(client, session))):
            return chosen
        default = _find(agents, self._default) if self._default else None
        if default is None and not agents:
            raise ProxyError(
                404, "No model was given and there is no agent to use.", code="model_not_found", param="model"
            )
        return default or min(agents, key=lambda agent: agent.created)

    async def chat_key(
        self, headers: Mapping[str, str], messages: Sequence[protocol.ChatMessage]
    ) -> str | None:
        """The chat a turn belongs to, when this Letta can keep separate conversations: the client's
        `X-Letta-Chat-Key`, else Open WebUI's chat id. A background task (a title, tags...) belongs to no
        chat: sent on, it must not open a conversation, nor write its prompt into the chat's."""
        key, param = headers.get(CHAT_KEY_HEADER), "X-Letta-Chat-Key"
        if not key and self._openwebui_chats:
            key, param = headers.get(OPENWEBUI_CHAT_HEADER), "X-OpenWebUI-Chat-Id"
        if not key:
            return None
        if len(key) > MAX_CHAT_KEY:
            raise bad_request(f"The chat key is longer than {MAX_CHAT_KEY} characters.", param=param)
        if detect_task(messages, headers) is not None:
            return None
        return key if await self._letta.has_conversations() else None

    async def conversation(self, client: Client, agent: Agent, chat_key: str) -> str:
        """The Letta conversation pinned to this key's chat with the agent, made on first use."""
        remembered = f"conversation:{agent.id}:{chat_key}"
        if (conversation := await self._recall(client, remembered)) is None:
            conversation = await self._letta.open_conversation(agent)
            await self._remember(client, remembered, conversation)
        return conversation

    def _session_key(self, user: str | None) -> str | None:
        if self._scope == "request":
            return None
        if self._scope == "global":
            return "global"
        return f"openai:{user or 'default'}"

    async def _remember(self, client: Client, key: str, value: str) -> None:
        try:
            await self._store.set(client.namespace, key, value)
        except SessionStoreError as exc:
            raise _store_down() from exc

    async def _recall(self, client: Client, key: str) -> str | None:
        try:
            return await self._store.get(client.namespace, key)
        except SessionStoreError as exc:
            raise _store_down() from exc


def with_speaker(
    request: protocol.ChatCompletionRequest, headers: Mapping[str, str]
) -> protocol.ChatCompletionRequest:
    """The request whose `user` (the sender's name, when a message has no `name`) is its own, else the
    user name Open WebUI forwards, percent-encoded. Only what reaches the agent: choosing the agent reads
    the `user` the client sent."""
    if request.user or not (name := unquote(headers.get(OPENWEBUI_USER_HEADER, ""))):
        return request
    return msgspec.structs.replace(request, user=name)


def _find(agents: list[Agent], wanted: str | None) -> Agent | None:
    """The agent with this id, else the one agent with this name; several with the name is a 400."""
    if wanted is None:
        return None
    if by_id := next((agent for agent in agents if agent.id == wanted), None):
        return by_id
    named = [agent for agent in agents if agent.name == wanted]
    if len(named) > 1:
        ids = ", ".join(agent.id for agent in named)
        raise bad_request(
            f"The model name '{wanted}' is shared by {len(named)} agents; name one by its id: {ids}.",
            param="model",
            code="ambiguous_model",
        )
    return named[0] if named else None


def _store_down() -> ProxyError:
    return ProxyError(
        503, "The session store is unavailable.", type="server_error", code="session_store_unavailable"
    )
