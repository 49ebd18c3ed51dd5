"""Clients that cost the server without asking anything of it: requests abandoned by a disconnect
or a 504 are dropped, not computed (counted: the items the model actually read); long contexts run
in batches of their own; connections that send headers or bodies too slowly are cut after the read
deadline (raw sockets against uvicorn in a thread, and against a `spanqa serve` process)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from test_reader import reader_folder
from test_serve import _free_port

from spanqa.qa.reader import Reader
from spanqa.qa.squad import Example
from spanqa.server import MicroBatcher, ServerLimits, create_app, uvicorn_config

CONTEXT = "The tower was finished in 1889. It was designed by Gustave Eiffel. It is 330 metres tall."
LONG = " ".join([CONTEXT] * 250)  # ~22,000 characters


@pytest.fixture(scope="module")
def reader(tiny_model, tmp_path_factory) -> Reader:
    return Reader.load(reader_folder(tiny_model, tmp_path_factory.mktemp("clients_reader")))


class Gated:
    """The reader's own `answer_many`, recording the questions it reads and the model batches it runs;
    the first pass waits for `gate` after its first model batch (it holds the model while others queue
    up behind it, or while its client goes away). `with gated:` opens the gate on the way out, also when
    an assertion failed, so that the held pass, its client and the server thread can end."""

    def __init__(self, reader: Reader):
        self.answer_many, self.questions, self.batches, self.gate = reader.answer_many, [], [], threading.Event()

    def __call__(self, pairs, top_k, on_batch=None):
        first = not self.questions
        self.questions.extend(q for q, _ in pairs)

        def counted(windows: int) -> None:
            self.batches.append(windows)
            if first and len(self.batches) == 1:
                self.gate.wait(60)
            if on_batch:
                on_batch(windows)

        return self.answer_many(pairs, top_k, on_batch=counted)

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        self.gate.set()


@contextmanager
def serving(reader: Reader, **limits) -> Iterator[tuple[str, object]]:
    """(url, app) of `reader` served by uvicorn, with spanqa's protocol and limits, in a thread."""
    app = create_app(reader, ServerLimits(**limits))
    server = uvicorn.Server(uvicorn_config(app, port=_free_port(), limits=ServerLimits(**limits), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 10 s"
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(15)


def _wait_until(condition, seconds: float = 20) -> None:
    stop = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < stop, "timed out waiting"
        time.sleep(0.02)


def _raw_request(port: int, body: bytes, path: str = "/v1/answer") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (path.encode(), len(body), body))
    return sock


def test_requests_of_clients_that_hang_up_are_not_computed(reader):
    gated = Gated(reader)
    reader.answer_many, real = gated, reader.answer_many
    try:
        with serving(reader) as (url, app), ThreadPoolExecutor(1) as pool, gated:
            blocker = pool.submit(httpx.post, url + "/v1/answer", json={"question": "blocker?", "context": CONTEXT},
                                  timeout=60)
            _wait_until(lambda: gated.questions == ["blocker?"])
            port = int(url.rsplit(":", 1)[1])
            socks = [_raw_request(port, json.dumps({"question": f"gone {i}?", "context": LONG}).encode())
                     for i in range(10)]
            _wait_until(lambda: len(app.state.batcher.pending) == 10)  # all queued behind the blocker
            for sock in socks:
                sock.close()
            _wait_until(lambda: httpx.get(url + "/health").json()["work"]["requests_abandoned"] == 10)
            gated.gate.set()
            assert blocker.result().status_code == 200
            after = httpx.post(url + "/v1/answer", json={"question": "after?", "context": CONTEXT}, timeout=60)
            assert after.status_code == 200
            work = httpx.get(url + "/health").json()["work"]
    finally:
        reader.answer_many = real
    assert gated.questions == ["blocker?", "after?"]  # none of the 10 long contexts was read
    assert work == {"requests_abandoned": 10, "items_run": 2, "items_dropped": 10, "passes_stopped": 0}


def test_a_pass_whose_client_hung_up_stops_between_model_batches(tiny_model, tmp_path):
    reader = Reader.load(reader_folder(tiny_model, tmp_path), batch_size=1)  # one window per model batch
    windows = len(reader.windows([Example("0", "gone?", LONG)]).input_ids)
    gated = Gated(reader)
    reader.answer_many = gated
    with serving(reader) as (url, app), gated:
        sock = _raw_request(int(url.rsplit(":", 1)[1]), json.dumps({"question": "gone?", "context": LONG}).encode())
        _wait_until(lambda: len(gated.batches) == 1)  # its pass is running, held after its first window
        sock.close()
        _wait_until(lambda: httpx.get(url + "/health").json()["work"]["requests_abandoned"] == 1)
        gated.gate.set()
        _wait_until(lambda: app.state.batcher.passes_stopped == 1)
        after = httpx.post(url + "/v1/answer", json={"question": "after?", "context": CONTEXT}, timeout=60)
        assert after.status_code == 200
    assert windows > 50 and len(gated.batches) == 1 + 1  # of the abandoned pass only the window it was held at


def test_requests_that_time_out_are_not_computed_later(reader):
    gated = Gated(reader)
    reader.answer_many, real = gated, reader.answer_many
    try:
        with serving(reader, timeout_s=1.0) as (url, app), ThreadPoolExecutor(11) as pool, gated:
            first = pool.submit(httpx.post, url + "/v1/answer", json={"question": "blocker?", "context": CONTEXT})
            _wait_until(lambda: gated.questions == ["blocker?"])
            late = [pool.submit(httpx.post, url + "/v1/answer", json={"question": f"late {i}?", "context": LONG},
                                timeout=30) for i in range(10)]
            assert [r.result().status_code for r in late] == [504] * 10
            assert first.result().status_code == 504  # its pass, held at the gate, stops at its next model batch
            gated.gate.set()
            _wait_until(lambda: not app.state.batcher.pending)
            after = httpx.post(url + "/v1/answer", json={"question": "after?", "context": CONTEXT}, timeout=30)
            assert after.status_code == 200
    finally:
        reader.answer_many = real
    assert gated.questions == ["blocker?", "after?"]
    assert app.state.batcher.items_dropped == 10
    assert app.state.batcher.passes_stopped == 1  # the blocker's: every client of it had its 504


def test_long_contexts_run_in_batches_of_their_own():
    passes = []

    def run_many(items):
        passes.append([len(c) for _, c in items])
        return items

    async def run():
        batcher = MicroBatcher(run_many, max_items=64, max_wait_s=0.05, cost=lambda item: len(item[1]),
                               max_cost=10_000)
        batcher.start()
        sizes = [100, 9_000, 100, 30_000, 100, 100, 6_000, 6_000]
        results = await asyncio.gather(*(batcher.submit([("q", "x" * n)]) for n in sizes))
        await batcher.stop()
        return sizes, results

    sizes, results = asyncio.run(run())
    assert [len(r[0][1]) for r in results] == sizes  # each request got its own item back
    assert sorted(n for p in passes for n in p) == sorted(sizes)
    assert all(sum(p) <= 10_000 or len(p) == 1 for p in passes), passes
    assert [30_000] in passes


@pytest.mark.parametrize("long_wait_s, expected", [(5.0, [[100, 100, 100], [8000]]),  # the short ones first
                                                    (0.0, [[8000], [100, 100, 100]])])  # waited long enough
def test_short_requests_go_before_a_long_one_for_a_while(long_wait_s, expected):
    passes = []

    def run_many(items):
        passes.append([len(c) for _, c in items])
        return items

    async def run():
        batcher = MicroBatcher(run_many, max_wait_s=0.05, cost=lambda item: len(item[1]), max_cost=10_000,
                               long_wait_s=long_wait_s)
        batcher.start()
        long = asyncio.ensure_future(batcher.submit([("q", "x" * 8_000)]))
        await asyncio.sleep(0)  # queued first
        await asyncio.gather(long, *(batcher.submit([("q", "x" * 100)]) for _ in range(3)))
        await batcher.stop()

    asyncio.run(run())
    assert passes == expected


# --- slow clients ------------------------------------------------------------------------------------------

HEAD = b"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = json.dumps({"question": "Who?", "context": CONTEXT}).encode()


def _held(port: int, first: bytes, trickle: bytes = b"", every: float = 0.2, limit: float = 15) -> tuple[float, bytes]:
    """Seconds until the server closed a connection that sent `first`, then `trickle` one byte per
    `every` seconds (then nothing); and what the server answered."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(every)
    start, answer, pending = time.monotonic(), b"", list(trickle)
    try:
        sock.sendall(first)
        while time.monotonic() - start < limit:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            except TimeoutError:
                if pending:
                    sock.sendall(bytes([pending.pop(0)]))
            except ConnectionResetError:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return time.monotonic() - start, answer


@pytest.mark.parametrize("first, trickle, answer", [
    (b"", b"", b"408"),  # connects, sends nothing
    (b"", HEAD + b"X-Slow: " + b"a" * 200, b"408"),  # headers one byte at a time, never finished
    (HEAD + b"Content-Length: 500\r\n\r\n" + BODY[:10], b"", b"the request body did not arrive"),  # body cut short
    (HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY), BODY, b"the request body did not arrive"),  # body trickled
])
def test_slow_clients_are_cut_off_after_the_read_deadline(reader, first, trickle, answer):
    with serving(reader, read_timeout_s=1.0) as (url, _):
        held, reply = _held(int(url.rsplit(":", 1)[1]), first, trickle)
        assert 0.8 <= held < 8, held  # not cut off: held until _held's limit (15 s); slack for a loaded machine
        assert reply.startswith(b"HTTP/1.1 408") and answer in reply, reply
        assert httpx.post(url + "/v1/answer", json={"question": "Who?", "context": CONTEXT}).status_code == 200


def test_serve_command_applies_the_read_timeout(tiny_model, tmp_path):
    folder = reader_folder(tiny_model, tmp_path)
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "spanqa", "serve", folder, "--port", str(port),
                                "--read-timeout", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_until(lambda: _answers(port) or process.poll() is not None, 120)
        assert process.poll() is None, process.stdout.read()
        held, reply = _held(port, HEAD, b"X-Slow: abcdefghijklmnopqrstuvwxyz")
        assert held < 8 and reply.startswith(b"HTTP/1.1 408"), (held, reply)
    finally:
        process.terminate()
        process.wait(10)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    except httpx.TransportError:
        return False
