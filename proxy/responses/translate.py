"""Pure translation of a Responses request into what reaches the agent, with no I/O.

As in chat completions, only what is new goes to Letta, which keeps the history: the input items after
the last assistant message or `function_call` item. Of those, `function_call_output` items answer the
client tools the agent called, and the user messages become ONE Letta user message, their parts in
order and their texts a blank line apart (Codex sends an `<environment_context>` item before the
prompt: the agent sees both as one turn). System and developer messages, and `instructions`, follow
PROXY_SYSTEM_MESSAGES; reasoning items are the model's own output and are skipped.
"""

from typing import Any, cast

from proxy.chat.protocol import FunctionDefinition
from proxy.chat.translate import Limits, image_part, sender_name, text_length, with_system_block
from proxy.errors import bad_request
from proxy.letta.wire import MessageCreateParam
from proxy.responses.protocol import InputItem, InputPart, ResponseRequest
from proxy.tools import ToolResult

TURN_BOUNDARIES = ("function_call",)  # besides assistant messages: items the agent produced
SKIPPED = ("reasoning",)  # the model's own output, sent back by some clients; nothing for the agent


def turn_input(
    request: ResponseRequest, limits: Limits, *, continuing: bool
) -> tuple[list[ToolResult], MessageCreateParam | None]:
    """The new function outputs (call id, output) and the new user message, if any; a 400 if neither.

    `continuing`: the request names a previous response, so its `instructions` were seen already.
    """
    items = (
        [InputItem(role="user", content=request.input)] if isinstance(request.input, str) else request.input
    )
    if len(items) > limits.messages:
        raise bad_request(
            f"Too many input items: {len(items)}, at most {limits.messages} are accepted.",
            param="input",
            code="too_many_messages",
        )
    last = max((i for i, item in enumerate(items) if _produced_by_agent(item)), default=-1)
    outputs: list[ToolResult] = []
    user_parts: list[dict[str, Any]] = []
    system: list[str] = []
    if request.instructions and not continuing and last == -1:
        system.append(request.instructions)
    for index in range(last + 1, len(items)):
        item, where = items[index], f"input[{index}]"
        kind = item.type or ("message" if item.role else None)
        if kind == "function_call_output":
            outputs.append(ToolResult(_required(item.call_id, f"{where}.call_id"), _output(item, where)))
        elif kind == "message" and item.role == "user":
            user_parts += _parts(item, where, limits)
        elif kind == "message" and item.role in ("system", "developer"):
            if limits.system_messages == "forward":  # else dropped unread, whatever it holds
                system.append(_text_only(item.content, f"{where}.content"))
        elif kind not in SKIPPED:
            raise bad_request(
                f"Unsupported input item in {where}: "
                "send messages, function_call and function_call_output items.",
                param=f"{where}.type",
            )
    message = _user_message(user_parts, request.user)
    if message is None and not outputs:
        raise bad_request(
            "No user message or function_call_output after the last assistant message or function_call: "
            "there is nothing new to send to the agent.",
            param="input",
        )
    if message is not None and limits.system_messages == "forward":
        message = with_system_block(message, system)
    text = sum(len(result.output) for result in outputs) + (text_length(message["content"]) if message else 0)
    if text > limits.text_chars:
        raise bad_request(
            f"The new input holds more than {limits.text_chars} characters of text.",
            param="input",
            code="message_too_long",
        )
    return outputs, message


def functions(request: ResponseRequest) -> list[FunctionDefinition]:
    """The request's `function` tools; other types (web_search, file_search...) have nothing to call in
    Letta and are not forwarded."""
    return [
        FunctionDefinition(tool.name, tool.description, tool.parameters)
        for tool in request.tools or ()
        if tool.type == "function" and tool.name
    ]


def _produced_by_agent(item: InputItem) -> bool:
    return item.type in TURN_BOUNDARIES or (item.type in (None, "message") and item.role == "assistant")


def _required(value: str | None, param: str) -> str:
    if not value:
        raise bad_request(f"Missing required field {param}.", param=param)
    return value


def _output(item: InputItem, where: str) -> str:
    if item.output is None:
        raise bad_request(f"Missing required field {where}.output.", param=f"{where}.output")
    return _text_only(item.output, f"{where}.output")


def _text_only(content: str | list[InputPart] | None, param: str) -> str:
    """Text where Letta takes only text: a tool's result, forwarded system instructions."""
    if content is None or isinstance(content, str):
        return content or ""
    for j, part in enumerate(content):
        if part.type not in ("input_text", "output_text", "text") or part.text is None:
            raise bad_request(
                f"Unsupported part of type '{part.type}' in {param}[{j}]: only text is accepted here.",
                param=f"{param}[{j}].type",
            )
    return "\n".join(cast(str, part.text) for part in content)


def _parts(item: InputItem, where: str, limits: Limits) -> list[dict[str, Any]]:
    """A user message's content as Letta parts; a string is one text part."""
    content = item.content
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content and content.strip() else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        if part.type in ("input_text", "text") and part.text is not None:
            parts.append({"type": "text", "text": part.text})
        elif part.type == "input_image" and part.image_url is not None:
            parts.append(image_part(part.image_url, f"{param}.image_url", limits))
        else:
            raise bad_request(
                f"Unsupported content part of type '{part.type}' in {param}: "
                "send input_text, or input_image with an image_url.",
                param=f"{param}.type",
            )
    return parts


def _user_message(parts: list[dict[str, Any]], user: str | None) -> MessageCreateParam | None:
    """One Letta user message; adjacent texts joined by a blank line, a plain string when only text."""
    merged: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + "\n\n" + part["text"]}
        else:
            merged.append(part)
    if not merged:
        return None
    content: str | list[Any] = (
        merged[0]["text"] if len(merged) == 1 and merged[0]["type"] == "text" else merged
    )
    message: MessageCreateParam = {"role": "user", "content": content}
    if name := sender_name(user):
        message["name"] = name
    return message
