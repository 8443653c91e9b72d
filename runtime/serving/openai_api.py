"""OpenAI request bodies -> engine arguments, checked field by field (errors name the field: 400), and the response
objects of /v1/completions and /v1/chat/completions."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import EmberError
from ..sampler import SamplingParams
from .tools import ToolChoice, check_tool_choice, check_tools

MAX_N = 16
MAX_STOPS = 4
MAX_LOGPROBS = 20


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class Parsed:
    model: str | None
    prompt: Any  # str | list[int] (completions) or messages (chat)
    max_tokens: int | None
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: none; k: each token's and the k most likely
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks)
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a number, got {value!r}", name)
    return float(value)


def _int(body: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {value!r}", name)
    return value


def parse(body: Any, chat: bool) -> Parsed:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, got {model!r}", "model")
    if chat:
        prompt = body.get("messages")
        if not isinstance(prompt, list) or not prompt:
            raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(f"messages[{i}] must be an object with a string 'role'", "messages")
            content = m.get("content")
            if isinstance(content, list):  # the content-parts form: text parts only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise BadRequest(f"messages[{i}].content: only text parts are supported", "messages")
                m["content"] = "".join(p["text"] for p in content)
            elif content is None and m.get("role") == "assistant" and m.get("tool_calls"):
                if not isinstance(m["tool_calls"], list):
                    raise BadRequest(f"messages[{i}].tool_calls must be a list", "messages")
            elif not isinstance(content, str):
                raise BadRequest(f"messages[{i}].content must be a string", "messages")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one prompt
        ok = isinstance(prompt, str) and prompt or (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))
        if not ok:
            raise BadRequest("'prompt' must be a non-empty string or list of token ids (one prompt)", "prompt")
    limit = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, limit, None if chat else 16)
    if max_tokens is not None and max_tokens < 1:
        raise BadRequest(f"'{limit}' must be at least 1, got {max_tokens}", limit)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOPS:
        stops = list(stop)
    else:
        raise BadRequest(f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    n = _int(body, "n", 1)
    if not 1 <= n <= MAX_N:
        raise BadRequest(f"'n' must be in [1, {MAX_N}], got {n}", "n")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest(f"'stream' must be a boolean, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    tools, tool_choice = None, ToolChoice("none")
    if chat:
        try:
            tools = check_tools(body["tools"]) if body.get("tools") is not None else None
            tool_choice = check_tool_choice(body.get("tool_choice"), tools)
        except EmberError as err:
            raise BadRequest(str(err), "tool_choice" if str(err).startswith("tool_choice") else "tools") from None
    for name in ("suffix", "functions") + (() if chat else ("tools",)):
        if body.get(name) not in (None, "", []):
            raise BadRequest(f"'{name}' is not supported by this server", name)
    if _int(body, "best_of", 1) != 1:
        raise BadRequest("'best_of' other than 1 is not supported by this server", "best_of")
    if body.get("echo") not in (None, False):
        raise BadRequest("'echo' is not supported by this server", "echo")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise BadRequest(f"'user' must be a string, got {body['user']!r}", "user")
    if not isinstance(options.get("include_usage", False), bool):
        raise BadRequest("'stream_options.include_usage' must be a boolean", "stream_options")
    logprobs = _logprobs(body, chat)
    logit_bias = body.get("logit_bias")
    if logit_bias is not None and not isinstance(logit_bias, dict):
        raise BadRequest("'logit_bias' must be an object mapping token ids to numbers", "logit_bias")
    response_format = body.get("response_format")
    if response_format is not None and not (isinstance(response_format, dict)
                                            and isinstance(response_format.get("type"), str)):
        raise BadRequest("'response_format' must be an object with a string 'type'", "response_format")
    temperature = _number(body, "temperature", 1.0)
    top_k = _int(body, "top_k", 0)
    try:
        sampling = SamplingParams(
            temperature=temperature,
            top_p=_number(body, "top_p", 1.0),
            top_k=0 if top_k == -1 else top_k,  # -1 is "off" too (vLLM's spelling)
            min_p=_number(body, "min_p", 0.0),
            seed=_int(body, "seed", None),
            presence_penalty=_number(body, "presence_penalty", 0.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0),
        )
    except EmberError as err:
        raise BadRequest(str(err)) from None
    return Parsed(model, prompt, max_tokens, sampling, stops, n, stream, bool(options.get("include_usage")),
                  logprobs, logit_bias or None, response_format, _bool(body, "ignore_eos"), tools, tool_choice)


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean, got {value!r}", name)
    return bool(value)


def _logprobs(body: Mapping[str, Any], chat: bool) -> int | None:
    """Completions: `logprobs` k (0..MAX_LOGPROBS). Chat: `logprobs` true, with `top_logprobs` k."""
    if not chat:
        k = _int(body, "logprobs", None)
        if k is not None and not 0 <= k <= MAX_LOGPROBS:
            raise BadRequest(f"'logprobs' must be in [0, {MAX_LOGPROBS}], got {k}", "logprobs")
        return k
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise BadRequest(f"'logprobs' must be a boolean, got {wanted!r}", "logprobs")
    k = _int(body, "top_logprobs", None)
    if k is not None and not 0 <= k <= MAX_LOGPROBS:
        raise BadRequest(f"'top_logprobs' must be in [0, {MAX_LOGPROBS}], got {k}", "top_logprobs")
    if k is not None and not wanted:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (k or 0) if wanted else None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(rid: str, model: str, chat: bool, choices: list[dict], usage_: dict | None,
                      chunk: bool = False) -> dict[str, Any]:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    out: dict[str, Any] = {"id": rid, "object": kind, "created": int(time.time()), "model": model,
                           "choices": choices}
    if usage_ is not None or not chunk:
        out["usage"] = usage_
    return out


def choice(index: int, text: str | None, finish: str | None, chat: bool, delta: bool, first: bool = False,
           logprobs: dict | None = None, tool_calls: list[dict] | None = None) -> dict:
    if not chat:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    if delta:
        body: dict[str, Any] = {"content": text}
        if first:
            body["role"] = "assistant"
        if tool_calls:
            body["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
        return {"index": index, "delta": body, "logprobs": logprobs, "finish_reason": finish}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def logprobs_object(entries: list[Any], token_text: Callable[[int], str], chat: bool, offset: int = 0) -> dict:
    """OpenAI's logprobs of a choice (or a chunk's part of it) from TokenLogprob entries. Completions: tokens,
    token_logprobs, top_logprobs ({token: logprob}) and text_offset (from `offset`); chat: content entries with
    each token's bytes and its top_logprobs list."""
    if chat:
        def item(token_id: int, logprob: float) -> dict[str, Any]:
            text = token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                            for e in entries], "refusal": None}
    tokens = [token_text(e.token_id) for e in entries]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [_top_by_text(e.top, token_text) for e in entries], "text_offset": offsets}


def _top_by_text(top: list[tuple[int, float]], token_text: Callable[[int], str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for token_id, logprob in top:  # most likely first: of tokens with the same text, the likeliest is kept
        out.setdefault(token_text(token_id), logprob)
    return out
