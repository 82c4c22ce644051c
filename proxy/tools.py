"""Client tools, pure: the functions a client offers, as Letta client tools, and its tool results and
approvals, as the Letta message that answers the calls an agent waits on.

The inputs are neutral (function definitions, (call id, output) results, pending calls), so chat
completions and the Responses API share them. No I/O.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from proxy.chat import protocol
from proxy.errors import bad_request
from proxy.letta.wire import ClientTool, LettaMessage, Message
from proxy.settings import ApprovalMode

TOOL_CHOICES = ("none", "auto", "required")
APPROVE_WORDS = frozenset({"approve", "approved", "yes", "allow", "ok", "true"})
MOVED_ON = "The user moved on without answering this tool call."
NO_APPROVER = "Denied: no one can approve this tool call here. Go on without it."
CLIENT_TOOL_AGENT_TYPES = frozenset({"letta_v1_agent", "sleeptime_agent"})  # others ignore client tools


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What the client answered to one call: its output, or for an approval, approve or deny."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A tool call the agent waits on: a client tool's, or one of its own tools needing approval."""

    call_id: str
    name: str


def chat_functions(tools: Sequence[protocol.Tool] | None) -> list[protocol.FunctionDefinition]:
    """A chat request's `tools`; only functions exist in Letta, so any other type is a 400."""
    functions = []
    for i, tool in enumerate(tools or ()):
        if tool.type != "function" or tool.function is None:
            raise bad_request(
                f"Unsupported tool type '{tool.type}' in tools[{i}]: only function tools are accepted.",
                param=f"tools[{i}].type",
            )
        functions.append(tool.function)
    return functions


def client_tools(functions: Sequence[protocol.FunctionDefinition], tool_choice: object) -> list[ClientTool]:
    """The functions as Letta client tools; `tool_choice: "none"` offers none.

    Other choices are accepted: Letta cannot force a call, so the agent decides as with "auto".
    """
    if isinstance(tool_choice, str) and tool_choice not in TOOL_CHOICES:
        raise bad_request(
            f"Invalid tool_choice '{tool_choice}': use none, auto, required or a function.",
            param="tool_choice",
        )
    if tool_choice == "none":
        return []
    offered: list[ClientTool] = []
    for function in functions:
        tool: ClientTool = {"name": function.name}
        if function.description is not None:
            tool["description"] = function.description
        if function.parameters is not None:
            tool["parameters"] = function.parameters
        offered.append(tool)
    return offered


def chat_tool_results(messages: Sequence[protocol.ChatMessage], max_chars: int) -> list[ToolResult]:
    """The `tool` messages after the last assistant message: the client's answers to its tool calls.

    Each must answer one of that message's calls, and every call must be answered, as OpenAI requires.
    """
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    results = [
        _result(i, message) for i, message in enumerate(messages) if i > last and message.role == "tool"
    ]
    if not results:
        return []
    asked = [call.id for call in messages[last].tool_calls or ()] if last >= 0 else []
    answered = [result.call_id for result in results]
    if sorted(answered) != sorted(asked):
        raise bad_request(
            f"The tool messages answer the calls {answered}, but the last assistant message made {asked}: "
            "answer each of its tool calls once.",
            param="messages",
        )
    if sum(len(result.output) for result in results) > max_chars:
        raise bad_request(
            f"The tool results hold more than {max_chars} characters of text.",
            param="messages",
            code="message_too_long",
        )
    return results


def _result(index: int, message: protocol.ChatMessage) -> ToolResult:
    if not message.tool_call_id:
        raise bad_request(f"messages[{index}] has no tool_call_id.", param=f"messages[{index}].tool_call_id")
    content = message.content
    text = content if isinstance(content, str) else "\n".join(part.text or "" for part in content or ())
    return ToolResult(message.tool_call_id, text)


def pending_calls(message: LettaMessage | None) -> list[PendingCall]:
    """The calls an `approval_request_message` waits on; none for any other message."""
    if message is None or message.message_type != "approval_request_message":
        return []
    calls = message.tool_calls if isinstance(message.tool_calls, list) else [message.tool_call]
    return [PendingCall(c.tool_call_id, c.name or "") for c in calls if c is not None and c.tool_call_id]


def answer(
    pending: Sequence[PendingCall],
    results: Sequence[ToolResult],
    client_names: Iterable[str],
    mode: ApprovalMode,
) -> Message:
    """The Letta message answering every pending call: client tools get their results, the agent's own
    tools an approval or denial (from the client in `client` mode, else denied)."""
    by_id = {result.call_id: result for result in results}
    waiting = [call.call_id for call in pending]
    if not pending or set(by_id) - set(waiting):
        raise bad_request(
            f"The tool results answer {sorted(by_id)}, but the agent waits on {waiting}: "
            "send results only for the tool calls of the agent's last answer.",
            param="messages",
        )
    names = set(client_names)
    items: list[dict[str, Any]] = []
    for call in pending:
        result = by_id.get(call.call_id)
        if call.name in names:
            if result is None:
                raise bad_request(f"No result for the tool call '{call.call_id}'.", param="messages")
            items.append(_tool_return(result))
        elif result is not None and mode == "client":
            items.append(_approval(call.call_id, result.output))
        else:
            items.append(_denial(call.call_id, NO_APPROVER))
    if all(item["type"] == "tool" for item in items):
        return cast(Message, {"type": "tool_return", "tool_returns": items})
    return cast(Message, {"type": "approval", "approvals": items})


def deny(pending: Sequence[PendingCall], reason: str) -> Message:
    """One Letta approval message denying every pending call."""
    return cast(Message, {"type": "approval", "approvals": [_denial(c.call_id, reason) for c in pending]})


def _tool_return(result: ToolResult) -> dict[str, Any]:
    return {"type": "tool", "tool_call_id": result.call_id, "status": "success", "tool_return": result.output}


def _approval(call_id: str, output: str) -> dict[str, Any]:
    """A client's answer to one of the agent's own calls: a yes word approves, anything else denies."""
    if output.strip().lower().rstrip(".!") in APPROVE_WORDS:
        return {"type": "approval", "tool_call_id": call_id, "approve": True}
    return _denial(call_id, output.strip() or "Denied by the user.")


def _denial(call_id: str, reason: str) -> dict[str, Any]:
    return {"type": "approval", "tool_call_id": call_id, "approve": False, "reason": reason}
