"""Serving one chat completion: from a parsed request to a whole answer or the frames of a stream.

Three paths: an Open WebUI background task or a LiteLLM health check, both answered here without any
agent; or a real turn, which waits for the agent's previous turns, goes to the agent's history or to
the conversation a chat key pins, and comes back whole or streamed.
"""

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from letta_client.types.agents.message_create_params import ClientTool

from proxy import protocol
from proxy.approvals import Approvals, TurnInput
from proxy.auth import Client
from proxy.disconnect import ClientGone, ClientWatch
from proxy.errors import bad_request
from proxy.letta import Agent, Letta
from proxy.routing import Routing, with_speaker
from proxy.settings import Settings
from proxy.stream import ChunkHeader, local_frames, sse_frames
from proxy.tasks import detect_task, local_answer
from proxy.tools import CLIENT_TOOL_AGENT_TYPES, chat_functions, chat_tool_results, client_tools
from proxy.translate import (
    Limits,
    TurnTranslator,
    completion,
    letta_messages,
    local_completion,
)
from proxy.turns import TurnQueue

HEALTH_CHECK_HEADER = "x-letta-proxy-health-check"
LOCAL_MODEL = "letta-openai-proxy"  # the `model` of an answer the proxy gives itself, when none was named

T = TypeVar("T")
Answer = protocol.ChatCompletion | AsyncGenerator[bytes, None]


@dataclass(frozen=True, slots=True)
class Served:
    """The answer (a completion, or stream frames), and what the access log says of it."""

    answer: Answer
    agent: str | None = None
    turn: TurnTranslator | None = None


class Chat:
    def __init__(self, letta: Letta, routing: Routing, turns: TurnQueue, settings: Settings) -> None:
        self._letta = letta
        self._routing = routing
        self._turns = turns
        self._settings = settings
        self.stall_seconds = settings.proxy_stall_seconds  # for the answer's sender
        self._approvals = Approvals(letta, settings.proxy_tool_approvals)
        self._limits = Limits(
            settings.proxy_max_messages, settings.proxy_max_text_chars, settings.proxy_max_image_bytes
        )

    async def serve(
        self,
        client: Client,
        request: protocol.ChatCompletionRequest,
        headers: Mapping[str, str],
        watch: ClientWatch,
    ) -> Served:
        header = ChunkHeader(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model or LOCAL_MODEL)
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        if self._settings.proxy_task_requests == "skip" and (task := detect_task(request.messages, headers)):
            return Served(_local(local_answer(task, request.messages), header, request.stream, include_usage))
        if headers.get(HEALTH_CHECK_HEADER, "").strip().lower() in ("1", "true"):
            # LiteLLM's health checks carry it (from `health_check_params`); real traffic never does.
            agent = await self._routing.named(client, request.model, request.user)  # key, Letta, agent
            header = ChunkHeader(header.id, header.created, agent.name)
            return Served(_local("", header, request.stream, include_usage), agent.name)
        return await self._turn(client, request, headers, header, include_usage, watch)

    async def _turn(
        self,
        client: Client,
        request: protocol.ChatCompletionRequest,
        headers: Mapping[str, str],
        header: ChunkHeader,
        include_usage: bool,
        watch: ClientWatch,
    ) -> Served:
        """A real turn: one at a time per agent (or per pinned conversation).

        A client that leaves while the turn waits in the queue never reaches Letta; one that leaves while
        Letta works on a whole turn, or before its stream has started, gets the run cancelled before the
        agent is free for the next turn. A started stream ends its turn itself, however it ends.
        """
        forward = self._settings.proxy_client_tools == "forward"
        offered = client_tools(chat_functions(request.tools), request.tool_choice) if forward else []
        results = chat_tool_results(request.messages, self._limits.text_chars) if forward else []
        messages = letta_messages(with_speaker(request, headers), self._limits, results_given=bool(results))
        agent = await self._routing.resolve(client, request.model, request.user, headers)
        offered = self._usable(agent, offered)
        header = ChunkHeader(header.id, header.created, agent.name)
        translator = TurnTranslator(
            self._settings.proxy_tool_calls,
            self._settings.proxy_reasoning,
            frozenset(tool["name"] for tool in offered),
            self._settings.proxy_tool_approvals,
        )
        chat_key = await self._routing.chat_key(headers, request.messages)
        release = await watch.guard(
            self._turns.enter(agent.id if chat_key is None else f"{agent.id}:{chat_key}")
        )
        conversation: str | None = None
        sent = streaming = False

        def end_stream() -> None:
            if streaming:  # a stream that failed to open is ended below, once its run is cancelled
                release()

        try:
            conversation = (
                await watch.guard(self._routing.conversation(client, agent, chat_key)) if chat_key else None
            )
            turn = TurnInput(agent, list(messages), results, offered, conversation)
            sent = True
            if not request.stream and conversation is None:
                whole = await watch.guard(self._approvals.send(turn))
                release()
                return Served(completion(whole, translator, *_fields(header)), agent.name, translator)
            events = await watch.guard(self._approvals.stream(turn, on_close=end_stream))
            streaming = True
        except ClientGone:
            if sent:  # the turn may have reached Letta: its run, if any, must not outlive the client
                await self._letta.cancel_active(agent, conversation)
            release()
            raise
        except BaseException:
            release()  # ending a turn twice is harmless: a stream that failed to open has ended it already
            raise
        if not request.stream:  # a conversation's turn, which Letta only streams: gathered whole
            gathered = await watch.guard(_gather(events))
            return Served(completion(gathered, translator, *_fields(header)), agent.name, translator)
        frames = sse_frames(
            events,
            translator,
            header,
            include_usage=include_usage,
            idle_seconds=self._settings.proxy_keepalive_seconds,
        )
        return Served(frames, agent.name, translator)

    def _usable(self, agent: Agent, offered: list[ClientTool]) -> list[ClientTool]:
        """Client tools for agent types that can call them; for others, none, or a 400 if so configured."""
        if not offered or agent.type is None or agent.type in CLIENT_TOOL_AGENT_TYPES:
            return offered
        if self._settings.proxy_client_tools_unsupported == "reject":
            raise bad_request(
                f"The agent '{agent.name}' ({agent.type}) cannot call client tools: send no tools.",
                param="tools",
                code="tools_unsupported",
            )
        return []


async def _gather(events: AsyncIterator[T]) -> list[T]:
    return [event async for event in events]


def _fields(header: ChunkHeader) -> tuple[str, int, str]:
    return header.id, header.created, header.model


def _local(text: str, header: ChunkHeader, stream: bool, include_usage: bool) -> Answer:
    """An answer given without any agent, in the form the client asked for."""
    if stream:
        return local_frames(header, text, include_usage)
    return local_completion(text, *_fields(header))
