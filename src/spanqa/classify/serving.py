"""`POST /v1/classify` of `spanqa serve` on a classifier folder: requests, checks and responses.

The app itself (`spanqa.server.create_app`: body limit, micro-batching, timeout, web page) is the
reader's; this module adds what differs for a classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from spanqa.classify.classifier import TASK, Classifier, Prediction
from spanqa.serving_limits import NonBlank

NOT_A_READER = ("this server runs a classifier: POST /v1/classify with {\"text\": ...} (and \"pair\" for a pair "
                "classifier); /v1/answer and /v1/ask need a reader folder")
NOT_A_CLASSIFIER = ("this server runs a question-answering reader: POST /v1/answer (or /v1/ask); /v1/classify "
                    "needs a classifier folder (spanqa classify train)")


class ClassifyRequest(BaseModel):
    text: NonBlank = Field(description="The text to classify (the first sentence of a pair)")
    pair: str | None = Field(None, min_length=1, description="The second sentence, for a pair classifier "
                                                               "(/health: pairs); omit it otherwise")


class ClassifyOut(BaseModel):
    label: str | None = Field(description="The most probable label; null for a regression model")
    score: float = Field(description="The label's probability; for a regression model, the predicted value")
    probabilities: dict[str, float] = Field(description="Every label's probability; {} for a regression model")


def describe(classifier: Classifier) -> dict[str, Any]:
    """What /health tells about a classifier."""
    settings = classifier.settings
    return {"task": TASK, "model": classifier.path, "backend": type(classifier.model).__name__,
            "labels": settings.labels, "pairs": settings.format.pairs, "regression": settings.format.is_regression}


def prediction_out(p: Prediction) -> dict[str, Any]:
    return {"label": p.label, "score": p.score, "probabilities": p.probabilities}


def add_classify_route(app: FastAPI, classifier: Classifier | None, limits, batcher, in_time: Callable) -> None:
    """`POST /v1/classify` on `app`: 400 when the server runs a reader (`classifier` None). Every item is
    checked before any is run: lengths (`limits.max_context_chars` for text and pair), items per
    request, and a pair exactly when the classifier reads pairs (422)."""

    def check(i: int, item: ClassifyRequest) -> None:
        where = f"item {i}: " if i >= 0 else ""
        for name, value in (("text", item.text), ("pair", item.pair)):
            if value is not None and len(value) > limits.max_context_chars:
                raise HTTPException(422, f"{where}{name} has {len(value)} characters; at most "
                                         f"{limits.max_context_chars} are accepted")
        pairs = classifier.settings.format.pairs
        if pairs and item.pair is None:
            raise HTTPException(422, f"{where}this classifier reads sentence pairs: give \"pair\" as well as \"text\"")
        if not pairs and item.pair is not None:
            raise HTTPException(422, f"{where}this classifier reads single texts: leave out \"pair\"")

    @app.post("/v1/classify", response_model=ClassifyOut | list[ClassifyOut])
    async def classify(request: ClassifyRequest | list[ClassifyRequest]):
        """Classify one {text, pair} item, or a list of them (a list of results back)."""
        if classifier is None:
            raise HTTPException(400, NOT_A_CLASSIFIER)
        items = request if isinstance(request, list) else [request]
        if not items:
            raise HTTPException(422, "the batch is empty")
        if len(items) > limits.max_batch_items:
            raise HTTPException(422, f"{len(items)} items in one request; at most {limits.max_batch_items}")
        for i, item in enumerate(items):
            check(i if isinstance(request, list) else -1, item)
        inputs = [item.text if item.pair is None else (item.text, item.pair) for item in items]
        predictions = await in_time(batcher.submit(inputs))
        out = [prediction_out(p) for p in predictions]
        return out if isinstance(request, list) else out[0]
