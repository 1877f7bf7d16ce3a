"""The HTTP JSON service (FastAPI).

  POST /v1/recommend        {"history": [...], "k": 50, "exclude_history": true}
                            -> {"items": [...], "scores": [...],
                                "unknown_ids": <ids of the history ignored>}
  POST /v1/recommend:batch  {"requests": [<recommend body>, ...]}
                            -> {"results": [<recommend answer>, ...]}
  GET  /healthz             -> {"status": "ok"}
  GET  /v1/metadata         -> the served version's metadata

Bad requests get a 4xx with a message; the service keeps serving.
"""

from typing import List, Union

import fastapi
from fastapi import responses
import pydantic

from remi_tf.serving.backends import UserTowerError
from remi_tf.serving.recommender import (Recommendation, Recommender,
                                         RequestError)

MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 256


class RecommendRequest(pydantic.BaseModel):
  """One user's request; raw ids may be strings or integers."""

  model_config = pydantic.ConfigDict(extra="forbid")
  history: List[Union[pydantic.StrictStr, pydantic.StrictInt]]
  k: pydantic.StrictInt = 50
  exclude_history: pydantic.StrictBool = True


class BatchRequest(pydantic.BaseModel):
  """Many users' requests, answered in one pass through the models."""

  model_config = pydantic.ConfigDict(extra="forbid")
  requests: List[RecommendRequest] = pydantic.Field(min_length=1,
                                                    max_length=MAX_BATCH)


class BodySizeLimit:
  """ASGI middleware: 413 for bodies above `max_bytes` (declared or sent)."""

  def __init__(self, app, max_bytes: int):
    self.app = app
    self.max_bytes = max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and int(declared) > self.max_bytes:
      return await self._reject(send)
    received = 0

    async def counting_receive():
      nonlocal received
      message = await receive()
      received += len(message.get("body", b""))
      if received > self.max_bytes:
        raise _BodyTooLarge()
      return message

    try:
      await self.app(scope, counting_receive, send)
    except _BodyTooLarge:
      await self._reject(send)

  async def _reject(self, send):
    body = (b'{"detail": "request body larger than %d bytes"}'
            % self.max_bytes)
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
  pass


def _answer(recommendation: Recommendation) -> dict:
  return {"items": recommendation.items, "scores": recommendation.scores,
          "unknown_ids": recommendation.unknown_ids}


def create_app(recommender: Recommender,
               max_body_bytes: int = MAX_BODY_BYTES) -> fastapi.FastAPI:
  """The FastAPI application around a loaded `Recommender`."""
  app = fastapi.FastAPI(title="remi-tf retrieval",
                        version=str(recommender.artifacts.version))

  @app.exception_handler(RequestError)
  async def request_error(_, error: RequestError):
    return responses.JSONResponse(status_code=422,
                                  content={"detail": str(error)})

  @app.exception_handler(UserTowerError)
  async def backend_error(_, error: UserTowerError):
    return responses.JSONResponse(status_code=502,
                                  content={"detail": str(error)})

  @app.get("/healthz")
  def healthz():
    return {"status": "ok"}

  @app.get("/v1/metadata")
  def metadata():
    return recommender.artifacts.metadata

  @app.post("/v1/recommend")
  def recommend(request: RecommendRequest):
    answer = recommender.recommend([[str(i) for i in request.history]],
                                   request.k, request.exclude_history)[0]
    return responses.JSONResponse(_answer(answer))

  @app.post("/v1/recommend:batch")
  def recommend_batch(batch: BatchRequest):
    groups = {}
    for position, request in enumerate(batch.requests):
      groups.setdefault((request.k, request.exclude_history), []).append(
          position)
    results = [None] * len(batch.requests)
    for (k, exclude), positions in groups.items():
      histories = [[str(i) for i in batch.requests[p].history]
                   for p in positions]
      for position, answer in zip(positions, recommender.recommend(
          histories, k, exclude)):
        results[position] = _answer(answer)
    # Returned as is: FastAPI's generic encoder would walk every item.
    return responses.JSONResponse({"results": results})

  app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
  return app
