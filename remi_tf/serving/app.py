"""The HTTP JSON service (FastAPI). Its OpenAPI document (`GET
/openapi.json`) is the contract: the request models declare every
constraint the service enforces, and every answer, errors included, has a
declared schema.

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
  GET  /openapi.json        -> the contract (OpenAPI 3.1)

Every 4xx and 5xx answer has one body, `ErrorResponse`: {"detail": [{"loc":
[...], "msg": "...", "type": "..."}]}, FastAPI's validation error without
the echoed input. Bad requests get a 4xx; the service keeps serving.
"""

import contextlib
import http
from typing import (Annotated, List, Literal, Optional, Sequence, Tuple, Type,
                    Union)

import fastapi
from fastapi import exceptions, responses
import prometheus_client
import pydantic
from starlette import datastructures, exceptions as starlette_exceptions

import remi_tf
from remi_tf.serving.backends import UserTowerError
from remi_tf.serving.batching import DEFAULT_MAX_BATCH, RequestBatcher
from remi_tf.serving.metrics import MetricsMiddleware, ServiceMetrics
from remi_tf.serving.recommender import Query, Recommendation, RequestError
from remi_tf.serving.reload import DEFAULT_POLL_SECONDS, ServedModel
from remi_tf.serving.shutdown import Drain, DrainMiddleware

MAX_BODY_BYTES = 1 << 20
MAX_BATCH = 256
DEFAULT_K = 50
ENDPOINTS = ("/v1/recommend", "/v1/recommend:batch", "/healthz",
             "/v1/metadata", "/metrics")


class ErrorDetail(pydantic.BaseModel):
  """One reason a request failed: where (`loc`, e.g. ["body", "k"]; empty
  for the request as a whole), a message and a machine-readable type."""

  model_config = pydantic.ConfigDict(extra="forbid")
  loc: List[Union[str, int]]
  msg: str
  type: str


class ErrorResponse(pydantic.BaseModel):
  """The body of every 4xx and 5xx answer."""

  model_config = pydantic.ConfigDict(extra="forbid")
  detail: List[ErrorDetail]


class RecommendAnswer(pydantic.BaseModel):
  """One user's answer: raw item ids, best first, and their scores (at most
  k; fewer when the index holds fewer items after exclusions, none when no
  id of the history is known)."""

  model_config = pydantic.ConfigDict(extra="forbid")
  items: List[str]
  scores: List[float]
  unknown_ids: int = pydantic.Field(
      ge=0, description="ids of the history the model does not know "
      "(ignored)")
  model_version: int = pydantic.Field(
      ge=1, description="the export version that answered")


class BatchAnswer(pydantic.BaseModel):
  """The answers of a batch, in the order of its requests."""

  model_config = pydantic.ConfigDict(extra="forbid")
  results: List[RecommendAnswer]


class Health(pydantic.BaseModel):
  """The service is up and serves `model_version`."""

  model_config = pydantic.ConfigDict(extra="forbid")
  status: Literal["ok"]
  model_version: int = pydantic.Field(ge=1)


class Metadata(pydantic.BaseModel):
  """The served version's export metadata (docs/serving.md lists it);
  `model_version` is the served version."""

  model_config = pydantic.ConfigDict(extra="allow")
  model_version: int = pydantic.Field(ge=1)
  version: int = pydantic.Field(ge=1)
  seq_len: int = pydantic.Field(ge=1)
  interests: int = pydantic.Field(ge=1)
  embedding_dim: int = pydantic.Field(ge=1)
  num_items: int = pydantic.Field(ge=1)


def _integral_float_as_int(value):
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value


# An integer as JSON Schema defines it: 16 and 16.0 (as 16); not "16" nor
# true.
JsonInteger = Annotated[pydantic.StrictInt,
                        pydantic.BeforeValidator(_integral_float_as_int)]
# A history item's time (unix seconds): such an integer in 0..2^53 - 1,
# JSON's interoperable integers (the bounds before the validator, so that
# the schema states them).
JsonTime = Annotated[pydantic.StrictInt, pydantic.Field(ge=0, le=2**53 - 1),
                     pydantic.BeforeValidator(_integral_float_as_int)]


def request_models(max_k: int) -> Tuple[Type[pydantic.BaseModel],
                                        Type[pydantic.BaseModel]]:
  """(RecommendRequest, BatchRequest): the request bodies of a service
  whose largest list is `max_k`, so that the schema states the bound.

  A history has no declared largest length: ids are strings of any length,
  so the 1 MiB body limit (a 413) bounds bytes, not ids.
  """

  class RecommendRequest(pydantic.BaseModel):
    """One user's request; raw ids may be strings or integers."""

    model_config = pydantic.ConfigDict(extra="forbid")
    history: List[Union[pydantic.StrictStr, JsonInteger]] = (
        pydantic.Field(min_length=1, description="raw item ids, oldest "
                       "first; ids the model does not know are ignored and "
                       "counted in unknown_ids"))
    k: JsonInteger = pydantic.Field(
        min(DEFAULT_K, max_k), ge=1, le=max_k,
        description="the most items to answer")
    exclude_history: pydantic.StrictBool = pydantic.Field(
        True, description="leave the history's items out of the answer")
    times: Optional[List[JsonTime]] = pydantic.Field(
        None, description="the history items' times in unix seconds, "
        "times[i] of history[i]; items past its end (all of them without "
        "it) have no time information. Read by the models that use times "
        "(pimirec), ignored by the others")

  class BatchRequest(pydantic.BaseModel):
    """Many users' requests, answered in one pass through the models."""

    model_config = pydantic.ConfigDict(extra="forbid")
    requests: List[RecommendRequest] = pydantic.Field(min_length=1,
                                                      max_length=MAX_BATCH)

  return RecommendRequest, BatchRequest


def _query(request) -> Query:
  return Query([str(i) for i in request.history], request.k,
               request.exclude_history, request.times)


def _answer(recommendation: Recommendation, version: int) -> dict:
  return {"items": recommendation.items, "scores": recommendation.scores,
          "unknown_ids": recommendation.unknown_ids,
          "model_version": version}


async def _recommend(batcher: RequestBatcher, request
                     ) -> responses.JSONResponse:
  """The answer to one validated `RecommendRequest`, through the batcher
  (raises as `RequestBatcher.recommend`)."""
  answer, version = await batcher.recommend(_query(request))
  return responses.JSONResponse(_answer(answer, version))


def _error(status: int, kind: str, message: str,
           loc: Sequence[Union[str, int]] = (),
           headers: Optional[dict] = None) -> responses.JSONResponse:
  """An `ErrorResponse` with one detail."""
  return responses.JSONResponse(
      {"detail": [{"loc": list(loc), "msg": message, "type": kind}]},
      status_code=status, headers=headers)


class BodyLimitMiddleware:
  """ASGI middleware: a request whose body is over `max_bytes`, declared
  (Content-Length) or sent in chunks, gets 413 with an `ErrorResponse`.

  (FastAPI's `max_body_size` answers a declared length over the limit with
  a plain-text body that no error model can declare.)
  """

  def __init__(self, app, max_bytes: int):
    self.app = app
    self.max_bytes = max_bytes
    self.message = f"Content Too Large: the limit is {max_bytes} bytes"

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    declared = datastructures.Headers(scope=scope).get("content-length", "")
    if declared.isdigit() and int(declared) > self.max_bytes:
      return await _error(413, "content_too_large", self.message)(
          scope, receive, send)
    received = 0

    async def receive_within_limit():
      nonlocal received
      event = await receive()
      received += len(event.get("body", b""))
      if received > self.max_bytes:
        # Raised while the endpoint reads its body: the handler of
        # HTTPException answers it.
        raise fastapi.HTTPException(413, self.message)
      return event

    await self.app(scope, receive_within_limit, send)


def _model_error(error: Union[RequestError, UserTowerError]
                 ) -> responses.JSONResponse:
  """The answer to a request the models could not answer."""
  if isinstance(error, UserTowerError):
    return _error(502, "user_tower_error", str(error))
  return _error(422, "request_error", str(error), ["body"])


class RecommendFastPath:
  """ASGI: answers `POST /v1/recommend` whose JSON body the request model
  accepts, without FastAPI's per-request machinery (exception and routing
  layers, dependency solving, the body parsed into Python objects and then
  validated): about a third of a lone request's time in the service.

  The body is validated from its bytes by pydantic (`model_validate_json`)
  and the query goes to the same `RequestBatcher` as FastAPI's endpoint.
  Every other request, and every body the model rejects, goes on to `app`
  (the body replayed), so the FastAPI application stays the one source of
  the contract's answers: its schema, and every error body.

  Args:
    app: the FastAPI application (its middlewares excepted).
    request_model: the application's `RecommendRequest`.
    batcher: the application's `RequestBatcher`.
  """

  PATH = "/v1/recommend"

  def __init__(self, app, request_model: Type[pydantic.BaseModel],
               batcher: RequestBatcher):
    self.app = app
    self.request_model = request_model
    self.batcher = batcher

  async def __call__(self, scope, receive, send):
    if not self._applies(scope):
      return await self.app(scope, receive, send)
    chunks = []
    while True:
      message = await receive()
      if message["type"] != "http.request":  # the client went away
        return
      chunks.append(message.get("body", b""))
      if not message.get("more_body", False):
        break
    body = b"".join(chunks)
    try:
      request = self.request_model.model_validate_json(body)
    except pydantic.ValidationError:
      return await self.app(scope, _replay(body, receive), send)
    try:
      response = await _recommend(self.batcher, request)
    except (RequestError, UserTowerError) as error:
      response = _model_error(error)
    await response(scope, receive, send)

  def _applies(self, scope) -> bool:
    """A JSON POST to /v1/recommend whose length is declared (the body
    limit checked it); chunked bodies take the application's path."""
    if (scope["type"] != "http" or scope["method"] != "POST" or
        scope["path"] != self.PATH):
      return False
    headers = datastructures.Headers(scope=scope)
    media_type = headers.get("content-type", "").split(";")[0].strip()
    return (media_type.lower() == "application/json" and
            headers.get("content-length", "").isdigit())


def _replay(body: bytes, receive):
  """An ASGI `receive` that gives `body` once, then defers to `receive`."""
  replayed = False

  async def receive_again():
    nonlocal replayed
    if replayed:
      return await receive()
    replayed = True
    return {"type": "http.request", "body": body, "more_body": False}

  return receive_again


def _declared_errors(*descriptions: Tuple[int, str]) -> dict:
  return {status: {"model": ErrorResponse, "description": description}
          for status, description in descriptions}


def create_app(model: ServedModel,
               poll_seconds: Optional[float] = DEFAULT_POLL_SECONDS,
               max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float = 0.0,
               drain: Optional[Drain] = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> fastapi.FastAPI:
  """The FastAPI application around a `ServedModel`.

  Each request reads the served `Recommender` once, so its answer comes
  from one version, named in it as `model_version`. The request schema's
  largest k is the served `Recommender.max_k`. While the application runs,
  `model` checks for new versions every `poll_seconds` (None: never).
  Concurrent single requests are answered in batches of at most
  `max_batch`, each waiting `batch_wait_ms` for more (`RequestBatcher`).
  Once `drain` is draining, new requests get 503 (`shutdown.run` drains
  on SIGTERM).
  """
  drain = drain or Drain()
  metrics = ServiceMetrics(model, ENDPOINTS, drain)
  batcher = RequestBatcher(model, max_batch, batch_wait_ms,
                           observe_batch=metrics.batch_size.observe)
  recommend_request, batch_request = request_models(model.current.max_k)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    if poll_seconds is not None:
      model.start(poll_seconds)
    try:
      yield
    finally:
      model.stop()

  app = fastapi.FastAPI(
      title="remi-tf retrieval", version=remi_tf.__version__,
      lifespan=lifespan,
      responses=_declared_errors(
          (500, "An unexpected fault of the service."),
          (503, "The service is shutting down (SIGTERM).")))
  model_errors = _declared_errors(
      (400, "The body cannot be read as text (it is not UTF-8)."),
      (413, f"The body is over {max_body_bytes} bytes."),
      (422, "The body is not JSON or breaks the request schema."),
      (502, "The user tower (TF Serving) failed."))

  @app.exception_handler(exceptions.RequestValidationError)
  async def validation_error(_, error: exceptions.RequestValidationError):
    # The input each error echoes by default may be most of a 1 MiB body.
    return responses.JSONResponse(status_code=422, content={"detail": [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in error.errors()]})

  @app.exception_handler(RequestError)
  @app.exception_handler(UserTowerError)
  async def model_error(_, error: Union[RequestError, UserTowerError]):
    return _model_error(error)

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def http_error(_, error: starlette_exceptions.HTTPException):
    # 404, 405, and 413 from BodyLimitMiddleware.
    kind = ("content_too_large" if error.status_code == 413 else
            http.HTTPStatus(error.status_code).name.lower())
    return _error(error.status_code, kind, str(error.detail),
                  headers=error.headers)

  @app.exception_handler(Exception)
  async def server_error(*_):
    return _error(500, "internal_error", "internal server error")

  @app.get("/healthz", response_model=Health)
  async def healthz():
    return responses.JSONResponse({"status": "ok",
                                   "model_version": model.version})

  # A plain Response class, so that the declared errors stay JSON.
  @app.get("/metrics", response_class=responses.Response, responses={
      200: {"description": "Prometheus's text format.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}})
  async def prometheus_metrics():
    return responses.Response(metrics.export(),
                              media_type=prometheus_client.CONTENT_TYPE_LATEST)

  @app.get("/v1/metadata", response_model=Metadata)
  async def metadata():
    artifacts = model.current.artifacts
    return responses.JSONResponse({**artifacts.metadata,
                                   "model_version": artifacts.version})

  # The endpoints return their JSON directly: FastAPI would otherwise
  # validate the answer against its response model and encode every item
  # again. The declared models are the documentation, and the fuzz test
  # (tests/test_contract.py) checks that answers conform to them.
  #
  # Single requests are batched on the event loop: the hop to a worker
  # thread that FastAPI makes for a `def` endpoint would add a third to a
  # lone request's time. A batch request may take tens of milliseconds, so
  # it goes to a worker thread and the loop stays free.
  @app.post(RecommendFastPath.PATH, response_model=RecommendAnswer,
            responses=model_errors)
  async def recommend(request: recommend_request):
    return await _recommend(batcher, request)

  @app.post("/v1/recommend:batch", response_model=BatchAnswer,
            responses=model_errors)
  def recommend_batch(batch: batch_request):
    recommender = model.current
    answers = recommender.recommend_queries(
        [_query(request) for request in batch.requests])
    return responses.JSONResponse({"results": [
        _answer(answer, recommender.artifacts.version)
        for answer in answers]})

  app.add_middleware(RecommendFastPath, request_model=recommend_request,
                     batcher=batcher)
  app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
  app.add_middleware(DrainMiddleware, drain=drain, refusal=_error(
      503, "shutting_down", "the service is shutting down",
      headers={"connection": "close"}))
  app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost
  return app
