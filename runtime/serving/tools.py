"""Tool calling for /v1/chat/completions: OpenAI's `tools` and `tool_choice` in, `tool_calls` out.

The tools reach the model through the chat template's own tool format when the template has one (it reads a
`tools` variable, as Llama 3.1's and Qwen 2.5's do); otherwise a system message lists them and asks for a JSON
call. With tool_choice "required" or a named function, the output is constrained by the grammar to a call
{"name": ..., "arguments": {...}} whose arguments follow that tool's parameters schema; with "auto" the model
may answer in text, and a reply that is a call (bare JSON, or inside <tool_call> tags) is returned as one.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import InputError


@dataclass
class ToolChoice:
    mode: str  # "none" | "auto" | "required"
    name: str | None = None  # a named function (mode "required")


def check_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not tools:
        raise InputError("'tools' must be a non-empty list of {type: 'function', function: {...}} objects")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(fn, Mapping):
            raise InputError(f"tools[{i}] must be {{type: 'function', function: {{name, parameters}}}}")
        if not isinstance(fn.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", fn["name"]):
            raise InputError(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -")
        if not isinstance(fn.get("parameters", {}), Mapping):
            raise InputError(f"tools[{i}].function.parameters must be a JSON schema object")
    return [dict(t) for t in tools]


def check_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise InputError(f"tool_choice '{choice}' needs 'tools'")
        return ToolChoice(choice)
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(fn, Mapping) and choice.get("type") == "function" and isinstance(fn.get("name"), str):
        names = [t["function"]["name"] for t in tools or []]
        if fn["name"] not in names:
            raise InputError(f"tool_choice names '{fn['name']}', which is not among the tools {names}")
        return ToolChoice("required", fn["name"])
    raise InputError("tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}")


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: tool call arguments as objects, no None content."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = dict(call.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                calls.append({**call, "function": fn, **fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def prompt_with_tools(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The chat prompt with the tools in the template's own format, or in a system message it lacks one."""
    messages = template_messages(messages)
    if "tools" in (tokenizer.info.chat_template or ""):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
    listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    note = ("You can call these functions:\n" + listing + '\nTo call one, reply with only a JSON object '
            '{"name": <function name>, "arguments": <its arguments object>}.')
    if messages[0]["role"] == "system":
        messages = [{**messages[0], "content": messages[0]["content"] + "\n\n" + note}] + messages[1:]
    else:
        messages = [{"role": "system", "content": note}] + messages
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def call_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """The JSON schema of one call to any of the tools (or to the named one)."""
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 "arguments": t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False}
               for t in tools if name is None or t["function"]["name"] == name]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_tool_calls(text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The calls a reply makes ({"name", "arguments"|"parameters"} objects, bare, in a list, or in <tool_call>
    tags), as OpenAI tool_calls; None when the reply is text."""
    names = {t["function"]["name"] for t in tools}
    body = text.strip()
    tagged = re.findall(r"<tool_call>(.*?)</tool_call>", body, flags=re.S)
    candidates = tagged or [body]
    calls = []
    for candidate in candidates:
        try:
            value = json.loads(candidate.strip())
        except ValueError:
            return None
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, Mapping) or item.get("name") not in names:
                return None
            args = item.get("arguments", item.get("parameters", {}))
            calls.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                          "function": {"name": item["name"], "arguments": json.dumps(args, ensure_ascii=False)}})
    return calls or None
