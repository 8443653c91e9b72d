"""The OpenAI-compatible HTTP server over an `AsyncEngine` (Starlette; `ember serve` runs it with uvicorn).

Routes: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics. Errors are OpenAI-style JSON:
400 bad parameters or a prompt the context cannot hold, 401 a wrong or missing API key (when one is set), 404 an
unknown model or route, 413 a body over MAX_BODY, 429 a full queue (with Retry-After). Streams are server-sent
events, `data: {chunk}` lines then `data: [DONE]`; with `stream_options.include_usage` every chunk has `usage`
null and a last chunk with no choices carries the counts (as OpenAI: without it no chunk has an empty `choices`,
so a client reading `chunk.choices[0]` works). A client that goes away mid-stream
cancels the response task, which aborts its sequences (freed within one engine step).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import EmberError
from .async_engine import AsyncEngine, QueueFull
from .metrics import Metrics
from .openai_api import BadRequest, Parsed, choice, completion_object, logprobs_object, parse, usage
from .sequence import Output
from .tools import call_schema, parse_tool_calls, prompt_with_tools

MAX_BODY = 4 << 20  # bytes
RETRY_AFTER_S = 1
FINISH = {"stop": "stop", "length": "length"}  # "abort" / "error" end a stream with no OpenAI reason


def error_response(err: BadRequest) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(engine: AsyncEngine, *, api_key: str | None = None, model_name: str | None = None,
               on_shutdown: Any = None) -> Starlette:
    name = model_name or engine.name
    metrics = Metrics(engine)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise BadRequest("a missing or wrong API key (send 'Authorization: Bearer KEY')", status=401,
                             kind="authentication_error")

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise BadRequest(f"the body is {declared} bytes, more than the {MAX_BODY} this server takes", status=413)
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > MAX_BODY:
                raise BadRequest(f"the body is more than the {MAX_BODY} bytes this server takes", status=413)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(f"the body is not valid JSON ({err})") from None

    async def models(request: Request) -> Response:
        check_auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "ember"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": name, "max_num_seqs": engine.core.scheduler.max_seqs,
                             "max_model_len": engine.context_length, **engine.stats()})

    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    def prepare(parsed: Parsed, chat: bool) -> tuple[list[int], int]:
        if parsed.model is not None and parsed.model != name:
            raise BadRequest(f"the model '{parsed.model}' does not exist; this server serves '{name}'", "model",
                             status=404, kind="not_found_error")
        try:
            if chat and parsed.tool_choice.mode != "none":
                if tok is None:
                    raise BadRequest(f"artifact {name} has no tokenizer, so it cannot chat", "messages")
                text = prompt_with_tools(tok, parsed.prompt, parsed.tools)
                prompt = tok.encode(text, add_bos=False)
            else:
                prompt = engine.encode_chat(parsed.prompt) if chat else parsed.prompt
            ids, max_tokens = engine.check_request(prompt, parsed.max_tokens)
        except EmberError as err:
            raise BadRequest(str(err), "messages" if chat else "prompt") from None
        if parsed.stop and engine.engine.tokenizer is None:
            raise BadRequest("stop strings need the artifact's tokenizer, which it has none of", "stop")
        if engine.waiting + parsed.n > engine.max_queue:
            raise BadRequest("the request queue is full; retry shortly", status=429, kind="rate_limit_error",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
        return ids, max_tokens

    tok = engine.engine.tokenizer

    def token_text(token_id: int) -> str:
        return tok.decode([token_id], skip_special_tokens=False) if tok is not None else str(token_id)

    def streams(parsed: Parsed, ids: list[int], max_tokens: int, rid: str) -> list[AsyncIterator[Output]]:
        """The n requests of one call, submitted now; if one is refused, those before it are aborted. The
        choices after the first fork the first one's prompt pages once it is computed."""
        from dataclasses import replace

        if parsed.tool_choice.mode == "required":  # the reply is a call: its JSON follows the tools' schemas
            constraint = engine.constraint({"type": "json_schema", "json_schema": {
                "name": "tool_call", "schema": call_schema(parsed.tools, parsed.tool_choice.name)}})
        else:
            constraint = engine.constraint(parsed.response_format) if parsed.response_format else None
        bias = engine.check_logit_bias(parsed.logit_bias)
        out: list[AsyncIterator[Output]] = []
        try:
            for i in range(parsed.n):
                sampling = parsed.sampling
                if sampling.seed is not None and i:  # the choices of one seeded request differ from each other
                    sampling = replace(sampling, seed=sampling.seed + i)
                out.append(engine.generate(ids, max_tokens=max_tokens, sampling=sampling, stop=parsed.stop,
                                           request_id=f"{rid}-{i}", logprobs=parsed.logprobs, logit_bias=bias,
                                           constraint=constraint.copy() if constraint is not None else None,
                                           follows=f"{rid}-0" if i else None, ignore_eos=parsed.ignore_eos))
        except BaseException:
            for i in range(len(out)):
                engine.core.abort(f"{rid}-{i}")
            raise
        return out

    async def handle(request: Request, chat: bool) -> Response:
        try:
            check_auth(request)
            parsed = parse(await read_json(request), chat)
            ids, max_tokens = prepare(parsed, chat)
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            gens = streams(parsed, ids, max_tokens, rid)
        except (QueueFull, EmberError) as err:
            if not isinstance(err, QueueFull):
                return error_response(BadRequest(str(err)))
            return error_response(BadRequest(str(err), status=429, kind="rate_limit_error",
                                             headers={"Retry-After": str(RETRY_AFTER_S)}))
        except BadRequest as err:
            return error_response(err)
        if parsed.stream:
            return StreamingResponse(sse(rid, chat, gens, len(ids), parsed), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        work = asyncio.ensure_future(asyncio.gather(*(collect(g) for g in gens)))
        gone = asyncio.ensure_future(disconnected(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the client went away: cancelling the collectors aborts its sequences now
            work.cancel()
            for i in range(parsed.n):
                engine.core.abort(f"{rid}-{i}")
            await asyncio.gather(work, return_exceptions=True)
            return Response(status_code=499)
        gone.cancel()
        try:
            results = work.result()
        except QueueFull as err:
            return error_response(BadRequest(str(err), status=429, kind="rate_limit_error",
                                             headers={"Retry-After": str(RETRY_AFTER_S)}))
        failed = [r for r in results if r[1] == "error"]
        if failed:
            return error_response(BadRequest(failed[0][3] or "generation failed", status=500, kind="server_error"))
        if any(r[1] == "abort" for r in results):
            return error_response(BadRequest("the server is shutting down", status=503, kind="server_error",
                                             headers={"Retry-After": str(RETRY_AFTER_S)}))
        choices = []
        for i, (text, reason, _, _, lps) in enumerate(results):
            calls = calls_in(parsed, text, reason)
            choices.append(choice(i, None if calls else text, "tool_calls" if calls else FINISH.get(reason), chat,
                                  delta=False, tool_calls=calls,
                                  logprobs=None if parsed.logprobs is None else logprobs_object(lps, token_text, chat)))
        return JSONResponse(completion_object(rid, name, chat, choices,
                                              usage(len(ids), sum(r[2] for r in results))))

    def calls_in(parsed: Parsed, text: str, reason: str | None) -> list[dict] | None:
        if parsed.tool_choice.mode == "none" or reason != "stop" or not parsed.tools:
            return None
        return parse_tool_calls(text, parsed.tools)

    async def disconnected(request: Request) -> None:
        """Returns when the client closes the connection (the body has been read: only a disconnect is left)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def collect(gen: AsyncIterator[Output]) -> tuple[str, str | None, int, str | None, list]:
        text, last, logprobs = [], None, []
        async for out in gen:
            text.append(out.text)
            logprobs += out.logprobs or []
            last = out
        assert last is not None
        return "".join(text), last.finish_reason, last.completion_tokens, last.error, logprobs

    async def sse(rid: str, chat: bool, gens: list[AsyncIterator[Output]], prompt_tokens: int,
                  parsed: Parsed) -> AsyncIterator[str]:
        """Chunks as the tokens come; with tools, each choice's reply is held to its end, then sent as a call
        (finish_reason "tool_calls") or as text."""
        want_logprobs = parsed.logprobs is not None
        usage_ = {"usage": None} if parsed.include_usage else {}
        hold = chat and parsed.tool_choice.mode != "none"
        held = [""] * len(gens)
        merged: asyncio.Queue[tuple[int, Output | BaseException]] = asyncio.Queue()

        async def pump(i: int, gen: AsyncIterator[Output]) -> None:
            try:
                async for out in gen:
                    await merged.put((i, out))
            except BaseException as err:  # noqa: BLE001  (QueueFull or cancellation: reported below)
                await merged.put((i, err))
                raise

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
        left, completion, first = len(gens), 0, [True] * len(gens)
        offsets = [0] * len(gens)
        try:
            while left:
                i, out = await merged.get()
                if isinstance(out, BaseException):
                    left -= 1
                    yield event({"error": {"message": str(out), "type": "server_error", "param": None,
                                           "code": None}})
                    continue
                if out.finish_reason is not None:
                    left -= 1
                    completion += out.completion_tokens
                    if out.error is not None:
                        yield event({"error": {"message": out.error, "type": "server_error", "param": None,
                                               "code": None}})
                        continue
                if hold:
                    held[i] += out.text
                    if out.finish_reason is None:
                        continue
                    calls = calls_in(parsed, held[i], out.finish_reason)
                    yield event(completion_object(rid, name, chat, [choice(
                        i, None if calls else held[i], "tool_calls" if calls else FINISH.get(out.finish_reason),
                        chat, delta=True, first=True, tool_calls=calls)], None, chunk=True), usage_)
                    continue
                # without a tokenizer there is no text: a chunk per step still shows the tokens coming
                if out.text or out.logprobs or out.finish_reason is not None or (chat and first[i]) or (
                        tok is None and out.token_ids):
                    lp = logprobs_object(out.logprobs or [], token_text, chat, offsets[i]) if want_logprobs else None
                    offsets[i] += len(out.text)
                    c = choice(i, out.text, FINISH.get(out.finish_reason or ""), chat, delta=True, first=first[i],
                               logprobs=lp)
                    first[i] = False
                    yield event(completion_object(rid, name, chat, [c], None, chunk=True), usage_)
            if parsed.include_usage:
                yield event(completion_object(rid, name, chat, [], usage(prompt_tokens, completion), chunk=True))
            yield "data: [DONE]\n\n"
        finally:  # cancelling a pump aborts its request (the engine's stream does it on the way out)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(BadRequest(f"no route {request.url.path}", status=404, kind="not_found_error"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(BadRequest(f"{request.method} is not allowed on {request.url.path}", status=405))

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return error_response(exc)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed,
                                                        BadRequest: bad_request},
                     lifespan=lifespan)


def event(obj: Any, extra: dict[str, Any] | None = None) -> str:
    if extra:
        obj = {**obj, **extra}
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
