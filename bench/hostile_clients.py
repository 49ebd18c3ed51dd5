"""The hostile side of `bench/serve_load.py --hostile`: clients that hang up, send slowly or send junk.

- hang-up clients send a whole request with a ~90,000-character context, wait 0-1 s (the request is
  queued or running) and close the connection; then again;
- slow clients open a connection and send a request head, or a head and a body, one byte every
  0.5 s, until the server cuts them off (recorded: how long they were held);
- junk clients post bodies that are not requests (invalid JSON, NaN, a lone surrogate, bytes that
  are not UTF-8, 100,000 nested brackets, random bytes, a body over the size limit), one every
  `junk_pause` s (recorded: the status of each; a 5xx or a dropped connection is a failure).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

HEAD = b"POST /v1/answer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"


def junk_bodies(max_body_bytes: int = 2_000_000, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, body) of each kind of junk, in the order they are sent."""
    rng = random.Random(seed)
    return [("invalid_json", b'{"question": "Who?", "context": '),
            ("nan", b'{"question": "Who?", "context": "It ended in 1990.", "top_k": NaN}'),
            ("infinity", b'{"question": "Who?", "context": "It ended in 1990.", "top_k": 1e999}'),
            ("lone_surrogate", b'{"question": "Who\\ud800?", "context": "It ended in 1990."}'),
            ("not_utf8", b'{"question": "Qui \xe9tait-ce ?", "context": "It ended in 1990."}'),
            ("deep", b"[" * 100_000),
            ("random_bytes", bytes(rng.getrandbits(8) for _ in range(4096))),
            ("wrong_shape", b'{"question": ["Who?"], "context": {"a": 1}, "top_k": "many"}'),
            ("too_large", b'{"question": "Who?", "context": "' + b"x" * (max_body_bytes + 1000) + b'"}')]


@dataclass
class HostileStats:
    """What the hostile clients did and what they saw."""

    hangups: int = 0
    slow_connections: int = 0
    slow_held_s: list[float] = field(default_factory=list)  # until the server closed the connection
    slow_still_open_at_end: int = 0
    junk_statuses: Counter = field(default_factory=Counter)  # "kind:status" -> count
    errors: Counter = field(default_factory=Counter)  # connection errors of the hostile clients themselves

    def to_dict(self) -> dict:
        held = sorted(self.slow_held_s)
        junk_failures = sum(n for k, n in self.junk_statuses.items() if not k.rsplit(":", 1)[1].startswith("4"))
        return {"hangups": self.hangups, "slow_connections": self.slow_connections,
                "slow_cut_after_s": {"min": held[0], "median": held[len(held) // 2], "max": held[-1]} if held else None,
                "slow_still_open_at_end": self.slow_still_open_at_end,
                "junk_requests": sum(self.junk_statuses.values()), "junk_not_4xx": junk_failures,
                "junk_statuses": dict(sorted(self.junk_statuses.items())), "client_errors": dict(self.errors)}


async def hang_up(url: str, body: bytes, stop_at: float, stats: HostileStats, seed: int) -> None:
    """Whole requests with a long context, each abandoned 0-1 s after it was sent."""
    rng = random.Random(seed)
    host, port = urlsplit(url).hostname, urlsplit(url).port
    request = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    while time.monotonic() < stop_at:
        try:
            _, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                await writer.drain()
                await asyncio.sleep(rng.uniform(0, 1))
            finally:  # closed also when the write fails, so sockets do not pile up
                writer.close()
            stats.hangups += 1
        except OSError as e:
            stats.errors[f"hang_up:{type(e).__name__}"] += 1
            await asyncio.sleep(0.1)


async def trickle(url: str, stop_at: float, stats: HostileStats, with_body: bool, every: float = 0.5) -> None:
    """Connections that send one byte every `every` s, never finishing: a head, or a head and a body."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    payload = (HEAD + b"Content-Length: 1000\r\n\r\n" + b'{"question": "Who?", "context": "' + b"x" * 966 if with_body
               else HEAD + b"X-Slow: " + b"a" * 10_000)
    while time.monotonic() < stop_at:
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            stats.errors[f"slow:{type(e).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        stats.slow_connections += 1
        sent, closed = 0, False
        if with_body:  # the head at once, then the body slowly
            writer.write(payload[:payload.index(b"\r\n\r\n") + 4])
            sent = payload.index(b"\r\n\r\n") + 4
        try:
            while sent < len(payload) and time.monotonic() < stop_at:
                writer.write(payload[sent:sent + 1])
                sent += 1
                try:  # any answer (a 408) or the end of the stream: the server ended it
                    await asyncio.wait_for(reader.read(65536), every)
                    closed = True
                    break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            closed = True
        if closed:
            stats.slow_held_s.append(round(time.monotonic() - start, 2))
        else:
            stats.slow_still_open_at_end += 1
        writer.close()


async def junk(url: str, stop_at: float, stats: HostileStats, pause: float, offset: int,
               max_body_bytes: int = 2_000_000) -> None:
    """Junk bodies in turn, one every `pause` s; the status of each is recorded."""
    bodies = itertools.cycle(junk_bodies(max_body_bytes)[offset:] + junk_bodies(max_body_bytes)[:offset])
    async with httpx.AsyncClient(timeout=60) as http:
        while time.monotonic() < stop_at:
            name, body = next(bodies)
            try:
                response = await http.post(url + "/v1/answer", content=body,
                                            headers={"content-type": "application/json"})
                stats.junk_statuses[f"{name}:{response.status_code}"] += 1
            except httpx.HTTPError as e:
                stats.junk_statuses[f"{name}:{type(e).__name__}"] += 1
            await asyncio.sleep(pause)


def long_request(contexts: list[str], chars: int = 90_000) -> bytes:
    """A /v1/answer body whose context is ~`chars` characters of dev paragraphs."""
    text, at = [], 0
    for context in itertools.cycle(contexts):
        if at >= chars:
            break
        text.append(context)
        at += len(context) + 1
    return json.dumps({"question": "What is this all about?", "context": " ".join(text)[:chars]}).encode()


def hostile_tasks(url: str, contexts: list[str], stop_at: float, stats: HostileStats, hangups: int, slow: int,
                  junk_clients: int, junk_pause: float) -> list:
    """The coroutines of every hostile client, to run beside the normal ones."""
    body = long_request(contexts)
    return ([hang_up(url, body, stop_at, stats, seed=k) for k in range(hangups)]
            + [trickle(url, stop_at, stats, with_body=k % 2 == 1) for k in range(slow)]
            + [junk(url, stop_at, stats, junk_pause, offset=k) for k in range(junk_clients)])
