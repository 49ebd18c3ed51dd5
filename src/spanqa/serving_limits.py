"""What one client can cost `spanqa serve`: deadlines for reading a request, body size, bodies that
are UTF-8 JSON the app can answer, and no work for clients that went away.

uvicorn (h11) has no deadline for a request's headers: a client sending one byte a second was held
for as long as it liked. `TimedH11Protocol` closes such connections; the body has its own deadline
in `RequestGuard`, which reads and checks every body before the app sees it and cancels the app
when the client disconnects (the batcher then drops the request's queued items).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import h11
from fastapi.encoders import jsonable_encoder
from pydantic import AfterValidator, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WITH_BODY = ("POST", "PUT", "PATCH")
DRAIN_FACTOR = 4  # a body up to 4x the limit is read and dropped, so the client reads its 413 rather than a reset
MAX_DEPTH = 32  # of arrays and objects in a body: a request has 3 (list, item, field); pydantic and
# FastAPI's error writer recurse through whatever they are given


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection (408) whose request headers are not complete within
    `read_timeout_s` of its opening or of the previous response."""

    read_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        self._arm()  # before the parent hands on a pipelined request, whose headers are then complete
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.read_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # IDLE: no complete request head since the timer was armed (the body's deadline is RequestGuard's)
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        text = f"request headers not received within {self.read_timeout_s:g} s".encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(text), text))
        self.transport.close()


def timed_h11(read_timeout_s: float) -> type[TimedH11Protocol]:
    """`TimedH11Protocol` with this header deadline, for uvicorn's `http=` setting."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"read_timeout_s": read_timeout_s})


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def _not_blank(text: str) -> str:
    # Python's white space, the reader's test (Reader.answer_many): it counts \x1c-\x1f, which regex \S does not
    if not text.strip():
        raise ValueError("must hold a character that is not white space")
    return text


# a blank question or text is a 422 up front, not a failure of the micro-batch it would have joined
NonBlank = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class RequestGuard:
    """ASGI middleware: each body is read within `read_timeout_s` (else 408) and up to `max_body_bytes`
    (else 413); a body that is not UTF-8 JSON of finite numbers and whole characters is a 422 naming
    the place; the app then runs, and is cancelled if the client disconnects before its response."""

    def __init__(self, app, max_body_bytes: int, read_timeout_s: float, counts: dict[str, int] | None = None):
        self.app, self.max_body_bytes, self.read_timeout_s = app, max_body_bytes, read_timeout_s
        self.counts = counts if counts is not None else {}  # "requests_abandoned": cancelled as their client left

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            body, drained = await self._read_body(scope, receive)
        except ClientGone:
            return
        except asyncio.TimeoutError:
            return await _reply(scope, send, 408, f"the request body did not arrive within {self.read_timeout_s:g} s",
                                close=True)
        if body is None:
            return await _reply(scope, send, 413, f"request body over {self.max_body_bytes} bytes", close=not drained)
        if scope["method"] in WITH_BODY and body:
            problem = json_problem(body)
            if problem:
                return await _reply(scope, send, 422, problem)
        await self._run_app(scope, body, receive, send)

    async def _read_body(self, scope: Message, receive: Receive) -> tuple[bytes | None, bool]:
        """(body, True), or (None, drained) when it is over the limit: drained when all of it was read."""
        limit, drain = self.max_body_bytes, DRAIN_FACTOR * self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > drain:
            return None, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        body, size, more = bytearray(), 0, True
        while more:
            message = await asyncio.wait_for(receive(), deadline - loop.time())
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                body += chunk
            elif size > drain:
                return None, False
            more = message.get("more_body", False)
        return (bytes(body), True) if size <= limit else (None, True)

    async def _run_app(self, scope: Message, body: bytes, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        replayed = finished = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True  # set before handing it on: a test client reports the disconnect as it arrives
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        app = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            app.cancel()
            watcher.cancel()
            raise
        if not app.done() and not finished:  # the client left first: stop its work (queued items are dropped)
            self.counts["requests_abandoned"] = self.counts.get("requests_abandoned", 0) + 1
            app.cancel()
        watcher.cancel()
        try:
            await app
        except asyncio.CancelledError:  # ours to swallow only when we cancelled it, not when we are cancelled
            if not app.cancelled() or getattr(asyncio.current_task(), "cancelling", lambda: 0)():
                raise


async def _reply(scope: Message, send: Send, status: int, detail: str, close: bool = False) -> None:
    headers = {"connection": "close"} if close else None
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


# --- bodies: UTF-8 JSON of finite numbers and whole characters ---------------------------------------

class _NonFinite:
    """A NaN/Infinity/-Infinity literal, kept to be reported with its place rather than turned into a float."""

    def __init__(self, name: str):
        self.name = name


def json_problem(body: bytes) -> str | None:
    """Why `body` is not JSON that the app can take (with the byte, line or field), or None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return (f"the request body is not UTF-8: byte 0x{body[e.start]:02x} at offset {e.start} ({e.reason}); "
                f"send JSON encoded as UTF-8")
    try:
        value = json.loads(text, parse_constant=_NonFinite)
    except RecursionError:
        return "the request body is nested too deeply to be a request"
    except json.JSONDecodeError as e:
        return f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    except ValueError as e:  # an integer past Python's digit limit
        return f"the request body holds a number that cannot be read: {e}"
    return _value_problem(value)


def _value_problem(value: Any) -> str | None:
    """The first non-finite number, lone surrogate or too deep nesting in a parsed body, with its path."""
    stack: list[tuple[Any, Any, int]] = [(value, None, 0)]  # (value, path as nested (parent, key) pairs, depth)
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, _NonFinite):
            return f"{_where(path)}: {v.name} is not JSON; numbers must be finite"
        if isinstance(v, float) and not math.isfinite(v):
            return f"{_where(path)}: the number is beyond the range of a double"
        if isinstance(v, str):
            bad = _lone_surrogate(v)
            if bad:
                return f"{_where(path)}: {bad}"
        elif isinstance(v, (dict, list)) and depth == MAX_DEPTH:
            return f"{_where(path)}: nested more than {MAX_DEPTH} levels deep; a request has at most 3"
        elif isinstance(v, dict):
            for key in v:
                bad = _lone_surrogate(key)
                if bad:
                    return f"{_where(path)}: a key has {bad}"
            stack.extend((item, (path, key), depth + 1) for key, item in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((v[i], (path, i), depth + 1) for i in range(len(v) - 1, -1, -1))
    return None


def _lone_surrogate(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"invalid Unicode: a lone surrogate \\u{ord(text[e.start]):04x} at character {e.start} "
                f"(a \\uXXXX escape of half a character pair)")
    return None


def _where(path: Any) -> str:
    keys = []
    while path is not None:
        path, key = path
        keys.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "body" + "".join(reversed(keys))


async def validation_error(request: Request, exc) -> JSONResponse:
    """FastAPI's 422 for a request that does not fit the schema, with each error's input and context
    left out where they cannot be written as JSON (the default handler answered those with a 500)."""
    errors = []
    for error in exc.errors():
        out = {k: error[k] for k in ("type", "loc", "msg") if k in error}
        for key in ("input", "ctx"):
            if key in error:
                try:
                    encoded = jsonable_encoder(error[key])
                    json.dumps(encoded, allow_nan=False, ensure_ascii=False).encode("utf-8")
                    out[key] = encoded
                except (ValueError, TypeError, UnicodeError, RecursionError):
                    pass
        errors.append(out)
    return JSONResponse({"detail": errors}, status_code=422)
