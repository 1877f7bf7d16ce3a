"""The HTTP JSON service (FastAPI).

  POST /v1/recommend        {"history": [...], "k": 50, "exclude_history": true}
                            -> {"items": [...], "scores": [...],
                                "unknown_ids": <ids of the history ignored>,
                                "model_version": <the version answering>}
  POST /v1/recommend:batch  {"requests": [<recommend body>, ...]}
                            -> {"results": [<recommend answer>, ...]}
  GET  /healthz             -> {"status": "ok", "model_version": v}
  GET  /v1/metadata         -> the served version's metadata (and
                               "model_version")
  GET  /metrics             -> Prometheus metrics (remi_tf.serving.metrics)

Bad requests get a 4xx with a message; the service keeps serving.
"""

import contextlib
from typing import List, Optional, Union

import fastapi
from fastapi import responses
import prometheus_client
import pydantic

import remi_tf
from remi_tf.serving.backends import UserTowerError
from remi_tf.serving.batching import DEFAULT_MAX_BATCH, RequestBatcher
from remi_tf.serving.metrics import MetricsMiddleware, ServiceMetrics
from remi_tf.serving.recommender import Query, Recommendation, RequestError
from remi_tf.serving.reload import DEFAULT_POLL_SECONDS, ServedModel
from remi_tf.serving.shutdown import Drain, DrainMiddleware

MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 256
ENDPOINTS = ("/v1/recommend", "/v1/recommend:batch", "/healthz",
             "/v1/metadata", "/metrics")


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


def _query(request: RecommendRequest) -> Query:
  return Query([str(i) for i in request.history], request.k,
               request.exclude_history)


def _answer(recommendation: Recommendation, version: int) -> dict:
  return {"items": recommendation.items, "scores": recommendation.scores,
          "unknown_ids": recommendation.unknown_ids,
          "model_version": version}


def create_app(model: ServedModel,
               poll_seconds: Optional[float] = DEFAULT_POLL_SECONDS,
               max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float = 0.0,
               drain: Optional[Drain] = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> fastapi.FastAPI:
  """The FastAPI application around a `ServedModel`.

  Each request reads the served `Recommender` once, so its answer comes
  from one version, named in it as `model_version`. While the application
  runs, `model` checks for new versions every `poll_seconds` (None: never).
  Concurrent single requests are answered in batches of at most
  `max_batch`, each waiting `batch_wait_ms` for more (`RequestBatcher`).
  Once `drain` is draining, new requests get 503 (`shutdown.run` drains
  on SIGTERM).
  """
  metrics = ServiceMetrics(model, ENDPOINTS)
  batcher = RequestBatcher(model, max_batch, batch_wait_ms,
                           observe_batch=metrics.batch_size.observe)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    if poll_seconds is not None:
      model.start(poll_seconds)
    try:
      yield
    finally:
      model.stop()

  app = fastapi.FastAPI(title="remi-tf retrieval", version=remi_tf.__version__,
                        max_body_size=max_body_bytes, lifespan=lifespan)

  @app.exception_handler(RequestError)
  async def request_error(_, error: RequestError):
    return responses.JSONResponse(status_code=422,
                                  content={"detail": str(error)})

  @app.exception_handler(UserTowerError)
  async def backend_error(_, error: UserTowerError):
    return responses.JSONResponse(status_code=502,
                                  content={"detail": str(error)})

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "model_version": model.version}

  @app.get("/metrics", response_class=responses.PlainTextResponse)
  async def prometheus_metrics():
    return responses.Response(metrics.export(),
                              media_type=prometheus_client.CONTENT_TYPE_LATEST)

  @app.get("/v1/metadata")
  async def metadata():
    artifacts = model.current.artifacts
    return {**artifacts.metadata, "model_version": artifacts.version}

  # Single requests are batched on the event loop: the hop to a worker
  # thread that FastAPI makes for a `def` endpoint would add a third to a
  # lone request's time. A batch request may take tens of milliseconds, so
  # it goes to a worker thread and the loop stays free.
  @app.post("/v1/recommend")
  async def recommend(request: RecommendRequest):
    answer, version = await batcher.recommend(_query(request))
    return responses.JSONResponse(_answer(answer, version))

  @app.post("/v1/recommend:batch")
  def recommend_batch(batch: BatchRequest):
    recommender = model.current
    answers = recommender.recommend_queries(
        [_query(request) for request in batch.requests])
    # Returned as is: FastAPI's generic encoder would walk every item.
    return responses.JSONResponse({"results": [
        _answer(answer, recommender.artifacts.version)
        for answer in answers]})

  app.add_middleware(DrainMiddleware, drain=drain or Drain())
  app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost
  return app
