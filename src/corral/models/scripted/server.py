"""The scripted model server: a test double speaking real model APIs on 127.0.0.1, answering from a script."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Self, TextIO

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from corral.errors import ScriptError
from corral.models.scripted import anthropic, openai_chat, openai_responses
from corral.models.scripted.script import Script, ScriptUsage, Turn, load_script
from corral.models.scripted.wire import (
    MALFORMED_BODY,
    Answer,
    AnswerCall,
    Api,
    ScriptedRequest,
    TokenUsage,
    WireError,
    WireFormat,
    parse_request,
)

WIRES: dict[Api, WireFormat] = {w.api: w for w in (openai_chat.WIRE, openai_responses.WIRE, anthropic.WIRE)}
"""The APIs the server speaks, each on its own path."""

log = logging.getLogger("corral.models.scripted")

# --- what the policy sees, and what gets recorded ---------------------------------------------


Policy = Callable[[ScriptedRequest], Turn | str | Awaitable[Turn | str]]
"""A function choosing the turn that answers a request (sync functions run in a worker thread)."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, and the HTTP status it answered with."""

    api: Api
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    position: int | None
    status: int
    ts: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> RecordedRequest:
        return cls(**json.loads(line))


def read_recording(path: Path | str) -> list[RecordedRequest]:
    """Read the JSONL file a server wrote to its ``record_path`` (perhaps in another process)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [RecordedRequest.from_json(line) for line in lines if line.strip()]


# --- the server -------------------------------------------------------------------------------


@dataclass
class _Conversation:
    """Where a conversation stands; kept per Responses id so ``previous_response_id`` can continue it."""

    system: str
    first_user: str
    position: int = 0
    tool_calls: int = 0

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.system}\0{self.first_user}".encode()).hexdigest()[:16]


class _Uvicorn(uvicorn.Server):
    async def main_loop(self) -> None:
        # uvicorn checks should_exit every 0.1 s; checking more often makes stop() (and test suites) fast.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            await asyncio.sleep(0.01)


_IFF_UP = 0x1
_SIOCGIFFLAGS, _SIOCSIFFLAGS = 0x8913, 0x8914


def ensure_loopback_up() -> None:
    """Bring ``lo`` up when it is down, as in a fresh network namespace (``unshare -n``).

    A namespace made for offline work has only a loopback interface, and it starts down, so
    nothing could reach a server on 127.0.0.1. Bringing it up needs CAP_NET_ADMIN in that
    namespace, which whoever made it has; without it this is a no-op and connections fail as before.
    (The flags are read with an ioctl, not from /sys, which shows the namespace it was mounted in.)
    """
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, struct.pack("16sh14x", b"lo", 0))
        flags = struct.unpack("16sh14x", answer)[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | _IFF_UP))


class ScriptedServer:
    """Serves a script (or a policy function) on a local port from a background thread.

    Use it as a context manager; ``port=0`` picks a free port, read it back from ``url``.
    """

    def __init__(
        self,
        script: Script | Sequence[Turn] | None = None,
        *,
        policy: Policy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: Path | None = None,
    ) -> None:
        if (script is None) == (policy is None):
            raise ScriptError("give ScriptedServer exactly one of a script or a policy")
        self.script = script if isinstance(script, Script) or script is None else Script(turns=list(script))
        self.policy = policy
        self.host, self._port, self.record_path = host, port, record_path
        self._requests: list[RecordedRequest] = []
        self._changed = threading.Condition()
        self._attempts: dict[tuple[str, int], int] = {}
        self._continuations: dict[str, _Conversation] = {}
        self._record_file: TextIO | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                *(HttpRoute(w.path, self._endpoint(w), methods=["POST"]) for w in WIRES.values()),
                HttpRoute("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                HttpRoute("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # lifecycle

    def start(self, timeout: float = 10.0) -> Self:
        """Bind the port and serve from a background thread; returns once the server accepts requests."""
        if self.host in ("127.0.0.1", "::1", "localhost"):
            ensure_loopback_up()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and without it
        # every keep-alive request waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
            if self.record_path is not None:
                self._record_file = open(self.record_path, "a", encoding="utf-8")  # noqa: SIM115 - stop() closes it
        except OSError as exc:
            sock.close()
            where = exc.filename or f"{self.host}:{self._port}"
            raise ScriptError(f"the scripted model server cannot use {where}: {exc.strerror}") from exc
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off")
        config.timeout_graceful_shutdown = 1
        self._server = server = _Uvicorn(config)
        self._thread = threading.Thread(target=server.run, args=([sock],), name="scripted-model", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ScriptError(f"the scripted model server did not start on {self.host}:{self._port}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the server thread (open streams get one second to finish)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout / 2)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout / 2)
        self._server = self._thread = None
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # addresses and recordings

    @property
    def port(self) -> int:
        if self._server is None:
            raise ScriptError("the scripted model server is not running: use it as a context manager")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._changed:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were recorded; raises ``TimeoutError`` otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests within {timeout}s, got {len(self._requests)}")
            return list(self._requests)

    def _record(self, request: Request, api: Api, body: Any, position: int | None, status: int, ts: float) -> None:
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = body if isinstance(body, dict) else None
        record = RecordedRequest(api, request.url.path, headers, body, position, status, ts)
        with self._changed:
            self._requests.append(record)
            if self._record_file is not None:
                self._record_file.write(record.to_json() + "\n")
                self._record_file.flush()
            self._changed.notify_all()

    # endpoints

    def _endpoint(self, wire: WireFormat) -> Callable[[Request], Awaitable[Response]]:
        api = wire.api

        async def endpoint(request: Request) -> Response:
            ts, body, position = time.time(), None, None
            try:
                body = json.loads(await request.body())
                if not isinstance(body, dict):
                    raise WireError("the request body must be a JSON object")
                parsed = parse_request(wire, body)
            except (ValueError, WireError) as exc:
                response = self._error(api, 400, f"invalid request: {exc}")
            else:
                try:
                    response, position = await self._answer(parsed)
                except Exception as exc:  # still answer in the API's error shape, and record the request
                    log.exception("the scripted model server failed to answer a request")
                    response = self._error(api, 500, f"the scripted model server failed: {exc!r}")
            self._record(request, api, body, position, response.status_code, ts)
            return response

        return endpoint

    def _error(self, api: Api, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(WIRES[api].error_body(status, message), status_code=status, headers=headers)

    def _conversation(self, request: ScriptedRequest) -> _Conversation | None:
        """Where the request's conversation stands, or None for an unknown ``previous_response_id``."""
        here = _Conversation(request.system, request.first_user_text)
        if request.previous_response_id is not None:
            previous = self._continuations.get(request.previous_response_id)
            if previous is None:
                return None
            # The input holds only what came after the previous response, which was itself a turn.
            here = _Conversation(previous.system, previous.first_user, previous.position + 1, previous.tool_calls)
        here.position += request.position
        here.tool_calls += request.tool_calls_so_far()
        return here

    async def _answer(self, request: ScriptedRequest) -> tuple[Response, int | None]:
        api, wire = request.api, WIRES[request.api]
        conversation = self._conversation(request)
        if conversation is None:
            message = f"Previous response with id '{request.previous_response_id}' not found."
            return self._error(api, 400, message), None
        position = conversation.position
        try:
            turn = await self._choose(replace(request, position=position, system=conversation.system), conversation)
        except ScriptError as exc:
            return self._error(api, 400, exc.message), position
        except Exception as exc:
            return self._error(api, 500, f"the scripted model policy raised {exc!r}"), position
        attempt = self._attempts.get((conversation.key, position), 0)
        self._attempts[conversation.key, position] = attempt + 1
        if turn.delay:
            await asyncio.sleep(turn.delay)
        if (failure := turn.failure_at(attempt)) is not None:
            headers = {}
            if failure.retry_after is not None:
                seconds = str(math.ceil(failure.retry_after))
                headers = {"retry-after": seconds, "retry-after-ms": str(int(failure.retry_after * 1000))}
            message = failure.message or f"scripted failure (attempt {attempt + 1} at turn {position})"
            return self._error(api, failure.status, message, headers), position
        if turn.malformed:
            if request.stream:
                return StreamingResponse(wire.malformed_stream(), media_type="text/event-stream"), position
            return Response(MALFORMED_BODY, media_type="application/json"), position
        answer = self._render_answer(turn, request, conversation)
        if api == "openai-responses":
            self._continuations[answer.id] = conversation
        if request.stream:
            stream = wire.render_stream(answer, request)
            headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers), position
        return JSONResponse(wire.render_body(answer, request)), position

    async def _choose(self, request: ScriptedRequest, conversation: _Conversation) -> Turn:
        if self.policy is not None:
            if inspect.iscoroutinefunction(self.policy):
                result = await self.policy(request)
            else:
                result = await run_in_threadpool(self.policy, request)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, str):
                return Turn(text=result)
            if not isinstance(result, Turn):
                raise ScriptError(f"the scripted model policy returned {type(result).__name__}, not a Turn")
            return result
        assert self.script is not None
        turns, where = self.script.turns_for(conversation.system, conversation.first_user)
        if request.position >= len(turns):
            raise ScriptError(
                f"script {self.script.name} has no turn at position {request.position}:"
                f" {where} holds {len(turns)} turns"
            )
        return turns[request.position]

    def _render_answer(self, turn: Turn, request: ScriptedRequest, conversation: _Conversation) -> Answer:
        calls: list[tuple[str | None, str, dict[str, Any] | str]] = [
            (c.id, c.name, c.args if c.input is None else c.input) for c in turn.tool_calls
        ]
        text, reasoning = turn.text or "", turn.reasoning or ""
        if turn.output is not None:
            tool = turn.output_tool or next((n for n in request.tool_names if n.startswith("final_result")), None)
            if tool is None:
                text = json.dumps(turn.output, default=str)
            else:
                calls.append((None, tool, turn.output if isinstance(turn.output, dict) else {"response": turn.output}))
        wire = WIRES[request.api]
        answer_calls = [
            AnswerCall(
                call_id or f"{wire.call_id_prefix}{conversation.tool_calls + n}",
                name,
                args if isinstance(args, str) else json.dumps(args, default=str),
                custom=isinstance(args, str),
            )
            for n, (call_id, name, args) in enumerate(calls, start=1)
        ]
        conversation.tool_calls += len(answer_calls)
        usage = turn.usage or ScriptUsage()
        output_chars = len(text) + len(reasoning) + sum(len(c.arguments) + len(c.name) for c in answer_calls)
        request_chars = len(json.dumps(request.body))
        tokens = TokenUsage(
            input=_or(usage.input_tokens, request_chars // 4, usage.cache_read_tokens + usage.cache_write_tokens),
            output=_or(usage.output_tokens, output_chars // 4, usage.reasoning_tokens),
            cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens,
            reasoning=usage.reasoning_tokens,
        )
        model = self.script.model if self.script is not None else request.model
        return Answer(wire.answer_id(), model, text, reasoning, answer_calls, tokens)

    async def _count_tokens(self, request: Request) -> Response:
        ts, raw = time.time(), await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record(request, "anthropic", body, None, 200, ts)
        return JSONResponse({"input_tokens": max(1, len(raw) // 4)})

    async def _models(self, request: Request) -> Response:
        name = self.script.model if self.script is not None else "scripted"
        model = {"id": name, "object": "model", "type": "model", "display_name": name, "owned_by": "corral"}
        model |= {"created": 0, "created_at": "1970-01-01T00:00:00Z"}
        return JSONResponse({"object": "list", "data": [model], "has_more": False, "first_id": name, "last_id": name})


def _or(given: int | None, estimate: int, at_least: int) -> int:
    """A scripted token count, or else an estimate no smaller than the parts the script fixed."""
    return given if given is not None else max(1, estimate, at_least)


# --- running it from the command line ---------------------------------------------------------


def serve(script_path: Path, *, host: str = "127.0.0.1", port: int = 0, record_path: Path | None = None) -> None:
    """Serve a script in the foreground until SIGINT or SIGTERM (call it from the main thread)."""
    script = load_script(script_path)
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ScriptedServer(script, host=host, port=port, record_path=record_path) as server:
            print(f"scripted model server on {server.url}", flush=True)
            while not stopping.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corral.models.scripted SCRIPT --port N [--record FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m corral.models.scripted", description=__doc__)
    parser.add_argument("script", type=Path, help="a .toml or .json script")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--record", type=Path, default=None, help="append every request to this JSONL file")
    args = parser.parse_args(argv)
    try:
        serve(args.script, host=args.host, port=args.port, record_path=args.record)
    except ScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
