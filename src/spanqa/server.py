"""HTTP server: `/v1/answer` (and `/v1/ask` over an index), or `/v1/classify` for a classifier folder
(spanqa.classify.serving), with micro-batching, limits and a web page.

Concurrent requests are gathered by `MicroBatcher` into one reader pass (one thread runs the
model, the event loop stays free). Limits: body size (413), context length, items per batch and
top_k (422), time per request (504).
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from spanqa.classify import serving as classify_serving
from spanqa.classify.classifier import Classifier
from spanqa.qa.decode import Answer
from spanqa.qa.reader import Reader


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 2_000_000
    max_context_chars: int = 100_000
    max_question_chars: int = 1_000
    max_batch_items: int = 64
    max_top_k: int = 20
    timeout_s: float = 30.0


NOT_BLANK = r"\S"  # at least one character that is not white space: a blank question is a 422, not a batch error


class AnswerRequest(BaseModel):
    question: str = Field(min_length=1, pattern=NOT_BLANK, description="The question")
    context: str = Field(min_length=1, pattern=NOT_BLANK, description="The passage to find the answer in")
    top_k: int = Field(1, ge=1, description="How many answers")


class AskRequest(BaseModel):
    question: str = Field(min_length=1, pattern=NOT_BLANK)
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
    `max_items` items) and calls `run_many(items) -> results` (one result per item, in order) once
    for all of them in a worker thread: `answering(reader.answer_many)` for a reader,
    `classifier.predict` for a classifier.
    """

    def __init__(self, run_many: Callable[[list[Any]], list[Any]], max_items: int = 64, max_wait_s: float = 0.005):
        self.run_many, self.max_items, self.max_wait_s = run_many, max_items, max_wait_s
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.last_trim = 0.0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()

    async def submit(self, items: list[Any]) -> list[Any]:
        """The results of `items`, computed together with those of other requests."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def _run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while sum(len(j[0]) for j in jobs) < self.max_items:
                left = deadline - time.monotonic()
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left) if left > 0 else self.queue.get_nowait())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            jobs = [j for j in jobs if not j[1].cancelled()]
            if jobs:
                await self._run_jobs(jobs)

    async def _run_jobs(self, jobs: list) -> None:
        items = [item for j in jobs for item in j[0]]
        try:
            results = await asyncio.to_thread(self._run_many_and_trim, items)
        except Exception as e:  # the error belongs to the requests, not to the worker
            for _, future in jobs:
                if not future.done():
                    future.set_exception(e)
            return
        at = 0
        for job_items, future in jobs:
            if not future.done():
                future.set_result(results[at:at + len(job_items)])
            at += len(job_items)

    def _run_many_and_trim(self, items: list[Any]) -> list[Any]:
        try:
            return self.run_many(items)
        finally:
            if time.monotonic() - self.last_trim > 1.0:
                self.last_trim = time.monotonic()
                _release_free_heap()


def answering(answer_many: Callable[[list[tuple[str, str]], int], list[list[Answer]]]
              ) -> Callable[[list[tuple[str, str, int]]], list[list[Answer]]]:
    """A reader's `answer_many` as a MicroBatcher's `run_many`: items are (question, context, top_k); one
    pass with the largest top_k, each item's answers cut to its own."""
    def run_many(items: list[tuple[str, str, int]]) -> list[list[Answer]]:
        answers = answer_many([(q, c) for q, c, _ in items], max(k for *_, k in items))
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


class BodyLimit:
    """ASGI middleware: 413 for request bodies over `max_bytes` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if int(declared) > self.max_bytes:
                return await self._too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:  # no length given (chunked): read up to the limit, then replay it to the app
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


def create_app(reader: Reader | Classifier, limits: ServerLimits = ServerLimits(), retriever=None) -> FastAPI:
    """The FastAPI app serving `reader` (and `retriever`, a DocumentStore: an Index or a PostgresStore,
    whose connection pool the request threads share, for /v1/ask), or a `Classifier` (POST /v1/classify)."""
    classifier = reader if isinstance(reader, Classifier) else None
    if classifier is not None and retriever is not None:
        raise ValueError("a classifier answers no questions about a collection: serve it without an index or store")
    batcher = MicroBatcher(answering(reader.answer_many) if classifier is None else classifier.predict,
                           max_items=limits.max_batch_items)

    async def lifespan(app: FastAPI):
        if retriever is not None:  # fail at start, not at the first question: reachable, the right embedder
            await asyncio.to_thread(_check_store, retriever)
        batcher.start()
        yield
        await batcher.stop()
        if retriever is not None and hasattr(retriever, "close"):
            retriever.close()

    app = FastAPI(title="spanqa", version="0.1.0", lifespan=lifespan,
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
        if classifier is not None:
            return {"status": "ok", **classify_serving.describe(classifier), "index": None}
        return {"status": "ok", "task": "qa", "model": reader.path, "backend": type(reader.model).__name__,
                "version_2": reader.settings.decoding.version_2, "calibrated": reader.settings.calibration is not None,
                "index": retriever.describe() if retriever else None}

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

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app


def _check_store(store) -> None:
    """Reach the store and load its embedding model (checked against the stored fingerprint); an
    empty store is fine (documents may be indexed while the server runs)."""
    if store.count():
        store.embedder()


def serve(reader: Reader | Classifier, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits(),
          retriever=None) -> None:
    import uvicorn

    uvicorn.run(create_app(reader, limits, retriever), host=host, port=port, log_level="info")
