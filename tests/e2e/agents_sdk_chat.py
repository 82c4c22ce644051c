"""Run under the OpenAI Agents SDK venv (tests/e2e/agents_venv.py), not by pytest: one agent run against the
proxy in chat-completions mode (or, with API=responses, in the SDK's default Responses mode), with a
@function_tool, whole or streamed.

Usage: python agents_sdk_chat.py <user text> [stream]; PROXY_URL, PROXY_KEY, AGENT (and API) in the
environment.
Prints one JSON line: the run's final output, the tool's calls, and the items the run produced.
"""

import asyncio
import json
import os
import sys

from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"sunny in {city}, 21 C"


async def main(text: str, stream: bool) -> None:
    set_tracing_disabled(True)  # tracing would upload to OpenAI
    client = AsyncOpenAI(
        base_url=f"{os.environ['PROXY_URL']}/v1", api_key=os.environ["PROXY_KEY"], max_retries=0
    )
    kind = OpenAIResponsesModel if os.environ.get("API") == "responses" else OpenAIChatCompletionsModel
    model = kind(model=os.environ["AGENT"], openai_client=client)
    agent = Agent(name="letta", instructions="Use the tools.", model=model, tools=[get_weather])
    if stream:
        result = Runner.run_streamed(agent, text)
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(agent, text)
    items = [item.type for item in result.new_items]
    print(json.dumps({"final": result.final_output, "calls": calls, "items": items}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:] == ["stream"]))
