"""HTTP server: `/v1/answer` (and `/v1/ask` over an index), or `/v1/classify` for a classifier folder
(spanqa.classify.serving), with micro-batching, limits and a web page.

Concurrent requests are gathered by `MicroBatcher` into one reader pass (one thread runs the
model, the event loop stays free). Limits: body size (413), read deadlines for headers and body
(408), bodies that are not UTF-8 JSON of finite numbers, context length, items per batch and top_k
(422), time per request (504); the work of clients that went away is dropped
(spanqa.serving_limits). The API docs at /docs and /redoc load nothing from a CDN.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from spanqa.classify import serving as classify_serving
from spanqa.classify.classifier import Classifier
from spanqa.qa.decode import Answer
from spanqa.qa.reader import Reader
from spanqa.serving_limits import NonBlank, RequestGuard, timed_h11, validation_error


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 2_000_000
    max_context_chars: int = 100_000
    max_question_chars: int = 1_000
    max_batch_items: int = 64
    max_batch_chars: int = 100_000  # characters of context per model pass: long ones run alone, and can be dropped
    max_top_k: int = 20
    timeout_s: float = 30.0
    read_timeout_s: float = 10.0  # for a request's headers, and again for its body


class Abandoned(Exception):
    """Raised between two model batches of a pass whose requests all went away: the rest is not computed."""


@dataclass
class Job:
    """One request's items waiting in a MicroBatcher."""

    items: list[Any]
    cost: float
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


class AnswerRequest(BaseModel):
    question: NonBlank = Field(description="The question")
    context: NonBlank = Field(description="The passage to find the answer in")
    top_k: int = Field(1, ge=1, description="How many answers")


class AskRequest(BaseModel):
    question: NonBlank
    top_k: int = Field(1, ge=1, description="How many answers")
    passages: int = Field(5, ge=1, le=50, description="How many passages to retrieve and read")
    mode: str = Field("hybrid", pattern="^(bm25|dense|hybrid)$")


class AnswerOut(BaseModel):
    text: str
    score: float = Field(description="Probability; for the no-answer result, the no-answer probability. With a "
                                     "calibrated reader (/health: calibrated), the probability that the answer is right")
    start: int = Field(description="Character offset into the context (-1 for no answer)")
    end: int


class AnswersOut(BaseModel):
    answers: list[AnswerOut]


def _answer_out(a: Answer) -> dict:
    return {"text": a.text, "score": a.score, "start": a.start, "end": a.end}


class MicroBatcher:
    """Runs the items of concurrent requests in shared batches.

    Requests queue up; a worker takes what has arrived within `max_wait_s` of the first one (up to
    `max_items` items and `max_cost` in `cost(item)`, e.g. characters, so that long contexts are not
    run together in one pass nothing can stop) and calls `run_many(items) -> results` (one result per
    item, in order) once for all of them in a worker thread: `answering(reader.answer_many)` for a
    reader, `classifier.predict` for a classifier. A request whose waiter was cancelled (its client
    went away, or it timed out with 504) is dropped when its turn comes, not computed. A job costing
    over half of `max_cost` is long: it runs alone, after the shorter jobs waiting with it for up to
    `long_wait_s`. With `interruptible`, `run_many(items, on_batch=...)` is stopped between two model
    batches once nobody waits for any of its items.
    """

    def __init__(self, run_many: Callable[..., list[Any]], max_items: int = 64, max_wait_s: float = 0.005,
                 cost: Callable[[Any], int] = lambda item: 1, max_cost: float = math.inf, interruptible: bool = False,
                 long_wait_s: float = 1.0):
        self.run_many, self.max_items, self.max_wait_s = run_many, max_items, max_wait_s
        self.cost, self.max_cost, self.interruptible, self.long_wait_s = cost, max_cost, interruptible, long_wait_s
        self.pending: deque[Job] = deque()
        self.arrived: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.last_trim = 0.0
        self.items_run = self.items_dropped = 0  # what was computed, and what was not because nobody waited
        self.passes_stopped = 0  # passes given up halfway: every request in them went away

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results of `items`, computed together with those of other requests."""
        job = Job(items, sum(map(self.cost, items)), asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self.arrived.set()
        return await job.future  # cancelling this wait cancels the future: the job is then dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._drop_abandoned():
                self.arrived.clear()
                await self.arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while not self._full() and (left := deadline - loop.time()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            jobs = self._take()
            if jobs:
                await self._run_jobs(jobs)

    def _drop_abandoned(self) -> bool:
        """Drop the waiting jobs nobody waits for any more; whether any job is left."""
        live = deque(j for j in self.pending if not j.future.done())
        self.items_dropped += sum(len(j.items) for j in self.pending if j.future.done())
        self.pending = live
        return bool(live)

    def _full(self) -> bool:
        items = cost = 0
        for job in self.pending:
            if not job.future.done():
                items, cost = items + len(job.items), cost + job.cost
                if items >= self.max_items or cost >= self.max_cost:
                    return True
        return False

    def _take(self) -> list[Job]:
        """The next batch: waiting jobs in order while they fit (the first always does), except that a
        long job waits up to `long_wait_s` while shorter ones run: one long context does not hold up
        every short request behind it, and a client that hangs up meanwhile costs nothing."""
        self._drop_abandoned()
        now, short_waiting = time.monotonic(), any(not self._long(j) for j in self.pending)
        jobs: list[Job] = []
        rest: deque[Job] = deque()
        items = cost = 0
        closed = False  # once a job does not fit, the later ones wait too (first come, first served)
        for job in self.pending:
            if closed or short_waiting and self._long(job) and now - job.since < self.long_wait_s:
                rest.append(job)
                continue
            if jobs and (items + len(job.items) > self.max_items or cost + job.cost > self.max_cost
                         or self._long(job) or self._long(jobs[0])):
                closed = True
                rest.append(job)
                continue
            jobs.append(job)
            items, cost = items + len(job.items), cost + job.cost
        self.pending = rest
        return jobs

    def _long(self, job: Job) -> bool:
        """Run alone: then a pass stopped because its client left stops nobody else's work."""
        return job.cost > self.max_cost / 2

    async def _run_jobs(self, jobs: list[Job]) -> None:
        items = [item for j in jobs for item in j.items]
        self.items_run += len(items)
        try:
            results = await asyncio.to_thread(self._run_many_and_trim, items, jobs)
        except Abandoned:
            self.passes_stopped += 1
            return
        except Exception as e:  # the error belongs to the requests, not to the worker
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        at = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[at:at + len(job.items)])
            at += len(job.items)

    def _run_many_and_trim(self, items: list[Any], jobs: list[Job]) -> list[Any]:
        def stop_if_abandoned(_: int) -> None:  # in the model's thread: reading a future's state is safe
            if all(job.future.done() for job in jobs):
                raise Abandoned()

        try:
            return self.run_many(items, on_batch=stop_if_abandoned) if self.interruptible else self.run_many(items)
        finally:
            if time.monotonic() - self.last_trim > 1.0:
                self.last_trim = time.monotonic()
                _release_free_heap()


def answering(answer_many: Callable[..., list[list[Answer]]]) -> Callable[..., list[list[Answer]]]:
    """A reader's `answer_many` as a MicroBatcher's `run_many`: items are (question, context, top_k); one
    pass with the largest top_k, each item's answers cut to its own (`on_batch` handed on when given)."""
    def run_many(items: list[tuple[str, str, int]], **on_batch) -> list[list[Answer]]:
        answers = answer_many([(q, c) for q, c, _ in items], max(k for *_, k in items), **on_batch)
        return [a[:k] for a, (*_, k) in zip(answers, items)]

    return run_many


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`; elsewhere nothing).

    Batches of ever-different shapes leave glibc's heap fragmented, and the server's RSS crept up
    under load: 450 -> 1,100 MB in 4 minutes (bench/serve_load.py). Trimming after a batch, at most
    once a second, kept a reader loop flat at ~480 MB at no measurable cost (a fixed 1 MB mmap
    threshold also kept it flat but read 13% slower).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# the process's own symbols (dlopen(NULL)): no library search at import
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def create_app(reader: Reader | Classifier, limits: ServerLimits = ServerLimits(), retriever=None) -> FastAPI:
    """The FastAPI app serving `reader` (and `retriever`, a DocumentStore: an Index or a PostgresStore,
    whose connection pool the request threads share, for /v1/ask), or a `Classifier` (POST /v1/classify)."""
    classifier = reader if isinstance(reader, Classifier) else None
    if classifier is not None and retriever is not None:
        raise ValueError("a classifier answers no questions about a collection: serve it without an index or store")
    batcher = MicroBatcher(answering(reader.answer_many) if classifier is None else classifier.predict,
                           max_items=limits.max_batch_items, cost=_chars, max_cost=limits.max_batch_chars,
                           interruptible=classifier is None)  # a classifier reads short texts: no need
    work = {"requests_abandoned": 0}  # counted by RequestGuard: requests cancelled as their client went away

    async def lifespan(app: FastAPI):
        if retriever is not None:  # fail at start, not at the first question: reachable, the right embedder
            await asyncio.to_thread(_check_store, retriever)
        batcher.start()
        yield
        await batcher.stop()
        if retriever is not None and hasattr(retriever, "close"):
            retriever.close()

    app = _fastapi(title="spanqa", version="0.1.0", lifespan=lifespan,
                   description="Extractive question answering: the span of the context that answers the question.")

    def check_top_k(top_k: int) -> None:
        if top_k > limits.max_top_k:
            raise HTTPException(422, f"top_k is {top_k}; at most {limits.max_top_k}")

    def check(item: AnswerRequest) -> None:
        if len(item.context) > limits.max_context_chars:
            raise HTTPException(422, f"context has {len(item.context)} characters; at most "
                                     f"{limits.max_context_chars} are accepted")
        if len(item.question) > limits.max_question_chars:
            raise HTTPException(422, f"question has {len(item.question)} characters; at most "
                                     f"{limits.max_question_chars} are accepted")
        check_top_k(item.top_k)

    async def in_time(coro):
        try:
            return await asyncio.wait_for(coro, limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the answer took longer than {limits.timeout_s:g} s") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        counts = {**work, "items_run": batcher.items_run, "items_dropped": batcher.items_dropped,
                  "passes_stopped": batcher.passes_stopped}
        if classifier is not None:
            return {"status": "ok", **classify_serving.describe(classifier), "index": None, "work": counts}
        return {"status": "ok", "task": "qa", "model": reader.path, "backend": type(reader.model).__name__,
                "version_2": reader.settings.decoding.version_2, "calibrated": reader.settings.calibration is not None,
                "index": retriever.describe() if retriever else None, "work": counts}

    @app.post("/v1/answer", response_model=AnswersOut | list[AnswersOut])
    async def answer(request: AnswerRequest | list[AnswerRequest]):
        """Answer one {question, context, top_k} item, or a list of them (a list of results back)."""
        if classifier is not None:
            raise HTTPException(400, classify_serving.NOT_A_READER)
        items = request if isinstance(request, list) else [request]
        if not items:
            raise HTTPException(422, "the batch is empty")
        if len(items) > limits.max_batch_items:
            raise HTTPException(422, f"{len(items)} items in one request; at most {limits.max_batch_items}")
        for item in items:
            check(item)
        results = await in_time(asyncio.gather(*(
            batcher.submit([(item.question, item.context, item.top_k)]) for item in items)))
        out = [{"answers": [_answer_out(a) for a in r[0]]} for r in results]
        return out if isinstance(request, list) else out[0]

    @app.post("/v1/ask")
    async def ask(request: AskRequest):
        """Retrieve passages from the loaded index, read them, and answer with sources."""
        if classifier is not None:
            raise HTTPException(400, classify_serving.NOT_A_READER)
        if retriever is None:
            raise HTTPException(400, "no index is loaded: start the server with --index INDEX_DIR")
        check_top_k(request.top_k)
        from spanqa.qa.collection import ask_collection

        from spanqa.data.documents import CollectionError

        try:
            answers = await in_time(asyncio.to_thread(ask_collection, reader, retriever, request.question,
                                                      request.top_k, request.passages, request.mode))
        except CollectionError as e:  # e.g. an empty store
            raise HTTPException(409, str(e)) from None
        except Exception as e:  # the database is down or every pooled connection is busy: retry later
            if type(e).__module__.split(".")[0] in ("psycopg", "psycopg_pool"):
                raise HTTPException(503, f"the document store is unavailable: {e}") from None
            raise
        return {"answers": [a.to_dict() for a in answers]}

    classify_serving.add_classify_route(app, classifier, limits, batcher, in_time)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return (resources.files("spanqa") / "static" / "index.html").read_text(encoding="utf-8")

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(RequestGuard, max_body_bytes=limits.max_body_bytes, read_timeout_s=limits.read_timeout_s,
                       counts=work)
    app.state.batcher = batcher
    return app


def _fastapi(**kwargs) -> FastAPI:
    """A FastAPI app whose /docs (Swagger UI) and /redoc pages load their scripts from this server
    (fastapi-offline): FastAPI's own pages load them from a CDN, and are blank pages offline."""
    # no validator badge: Swagger UI would fetch it from validator.swagger.io
    return FastAPIOffline(swagger_ui_parameters={"validatorUrl": None}, **kwargs)


def _check_store(store) -> None:
    """Reach the store and load its embedding model (checked against the stored fingerprint); an
    empty store is fine (documents may be indexed while the server runs)."""
    if store.count():
        store.embedder()


def _chars(item: Any) -> int:
    """Characters of a batch item (reader: question, context, top_k; classifier: a text or a pair)."""
    return len(item) if isinstance(item, str) else sum(len(x) for x in item if isinstance(x, str))


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits(),
                   log_level: str = "info"):
    """uvicorn's settings for `app`: its h11 protocol with a deadline for request headers."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=timed_h11(limits.read_timeout_s))


def serve(reader: Reader | Classifier, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits(),
          retriever=None) -> None:
    import uvicorn

    # what uvicorn.run() does around Server.run(): Ctrl-C ends quietly (uvicorn re-raises the signal
    # after its shutdown), and a failed start-up exits with uvicorn's code 3
    server = uvicorn.Server(uvicorn_config(create_app(reader, limits, retriever), host, port, limits))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(3)
