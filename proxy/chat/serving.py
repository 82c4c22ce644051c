"""Serving one chat completion: from a parsed request to a whole answer or the frames of a stream.

Three paths: an Open WebUI background task or a LiteLLM health check, both answered here without any
agent; or a real turn, which waits for the agent's previous turns, goes to the agent's history or to
the conversation a chat key pins, and comes back whole or streamed.
"""

import time
import uuid
from collections.abc import AsyncGenerator, Mapping

from proxy.agent_choice import AgentChoice, with_speaker
from proxy.auth import Client
from proxy.chat import protocol
from proxy.chat.encode import ChunkHeader, completion, local_completion
from proxy.chat.stream import local_frames, sse_frames
from proxy.chat.translate import Limits, letta_messages
from proxy.disconnect import ClientWatch
from proxy.settings import Settings
from proxy.tasks import detect_task, local_answer
from proxy.tools import chat_functions, chat_tool_results, client_tools
from proxy.turn_runner import Sent, Served, Target, TurnRunner

HEALTH_CHECK_HEADER = "x-letta-proxy-health-check"
LOCAL_MODEL = "letta-openai-proxy"  # the `model` of an answer the proxy gives itself, when none was named

Answer = protocol.ChatCompletion | AsyncGenerator[bytes, None]


class Chat:
    def __init__(self, runner: TurnRunner, choice: AgentChoice, settings: Settings) -> None:
        self._runner = runner
        self._choice = choice
        self._settings = settings
        self.stall_seconds = settings.proxy_stall_seconds  # for the answer's sender
        self._limits = Limits.of(settings)

    async def serve(
        self,
        client: Client,
        request: protocol.ChatCompletionRequest,
        headers: Mapping[str, str],
        watch: ClientWatch,
    ) -> Served[protocol.ChatCompletion]:
        header = ChunkHeader(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model or LOCAL_MODEL)
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        if self._settings.proxy_task_requests == "skip" and (task := detect_task(request.messages, headers)):
            return Served(_local(local_answer(task, request.messages), header, request.stream, include_usage))
        if headers.get(HEALTH_CHECK_HEADER, "").strip().lower() in ("1", "true"):
            # LiteLLM's health checks carry it (from `health_check_params`); real traffic never does.
            agent = await self._choice.named(client, request.model, request.user)  # key, Letta, agent
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
    ) -> Served[protocol.ChatCompletion]:
        """A real turn, answered as a chat.completion or its chunks."""
        forward = self._settings.proxy_client_tools == "forward"
        offered = client_tools(chat_functions(request.tools), request.tool_choice) if forward else []
        results = chat_tool_results(request.messages, self._limits.text_chars) if forward else []
        messages = letta_messages(with_speaker(request, headers), self._limits, results_given=bool(results))
        chat_key = await self._choice.chat_key(headers, request.messages)
        target = Target(request.model, request.user, headers, chat_key=chat_key)
        turn = await self._runner.run(
            client, target, Sent(messages, results, offered), watch, stream=request.stream
        )
        header = ChunkHeader(header.id, header.created, turn.agent.name)
        translator = self._runner.translator(turn, self._settings.proxy_tool_calls)
        if isinstance(turn.events, list):
            return Served(completion(turn.events, translator, header), turn.agent.name, translator)
        frames = sse_frames(
            turn.events,
            translator,
            header,
            include_usage=include_usage,
            idle_seconds=self._settings.proxy_keepalive_seconds,
        )
        return Served(frames, turn.agent.name, translator)


def _local(text: str, header: ChunkHeader, stream: bool, include_usage: bool) -> Answer:
    """An answer given without any agent, in the form the client asked for."""
    if stream:
        return local_frames(header, text, include_usage)
    return local_completion(text, header)
