"""The service's OpenAPI document (GET /openapi.json) is its contract: it
states the bounds the service enforces, every answer (errors included)
has a declared schema, and schemathesis, with all of its checks, finds no
request the service answers against it."""

import json
import os

import httpx
import pytest
from fastapi import responses, testclient

from conftest import load_script
from remi_tf import serving
from remi_tf.serving import app as service_app
from remi_tf.serving.backends import UserTowerError
from remi_tf.serving.batching import RequestBatcher
from remi_tf.serving.shutdown import Drain
from test_serving import _free_port, _process

# Above the tiny export's number of items, so that a k within the bound can
# ask for more items than the index holds.
MAX_K = 1000


@pytest.fixture(name="model", scope="module")
def fixture_model(tiny_run):
  export_dir = str(tiny_run[1])
  model = serving.ServedModel(export_dir, lambda version: serving.Recommender(
      serving.load_artifacts(export_dir, None, version), MAX_K))
  assert len(model.current.artifacts.vocabulary) < MAX_K
  return model


@pytest.fixture(name="drain")
def fixture_drain():
  return Drain()


@pytest.fixture(name="client")
def fixture_client(model, drain):
  """The service in-process (no polling), server faults answered."""
  app = serving.create_app(model, poll_seconds=None, drain=drain)
  with testclient.TestClient(app, raise_server_exceptions=False) as client:
    yield client


@pytest.fixture(name="schema")
def fixture_schema(client):
  return client.get("/openapi.json").json()


def test_the_schema_states_the_bounds_the_service_enforces(client, schema,
                                                          model):
  schemas = schema["components"]["schemas"]
  request, batch = schemas["RecommendRequest"], schemas["BatchRequest"]
  assert request["properties"]["k"]["minimum"] == 1
  assert request["properties"]["k"]["maximum"] == MAX_K
  assert request["properties"]["history"]["minItems"] == 1
  assert request["additionalProperties"] is False
  assert batch["properties"]["requests"]["minItems"] == 1
  assert batch["properties"]["requests"]["maxItems"] == service_app.MAX_BATCH
  history = model.current.artifacts.vocabulary.raw_ids[:3].tolist()
  at_bounds = {"history": history, "k": MAX_K}
  assert client.post("/v1/recommend", json=at_bounds).status_code == 200
  assert client.post("/v1/recommend:batch", json={
      "requests": [at_bounds] * service_app.MAX_BATCH}).status_code == 200
  for past_a_bound in ({"history": history, "k": MAX_K + 1},
                       {"history": history, "k": 0},
                       {"history": []}):
    assert client.post("/v1/recommend",
                       json=past_a_bound).status_code == 422
    assert client.post("/v1/recommend:batch", json={
        "requests": [past_a_bound]}).status_code == 422
  for requests in ([], [at_bounds] * (service_app.MAX_BATCH + 1)):
    assert client.post("/v1/recommend:batch",
                       json={"requests": requests}).status_code == 422


def test_a_k_beyond_the_items_indexed_answers_every_item(client, model):
  vocabulary = model.current.artifacts.vocabulary
  history = vocabulary.raw_ids[:5].tolist()
  for exclude_history, expected in ((False, vocabulary.raw_ids),
                                    (True, vocabulary.raw_ids[5:])):
    answer = client.post("/v1/recommend", json={
        "history": history, "k": MAX_K, "exclude_history": exclude_history})
    assert answer.status_code == 200
    assert sorted(answer.json()["items"]) == sorted(expected.tolist())


def test_a_history_of_only_unknown_ids_is_answered_empty(client, model):
  """Valid by the schema, so a 200: the caller learns from `unknown_ids`
  that the model knows none of them (e.g. items newer than the export)."""
  unknown = {"history": ["no-such-item", "", 10**30], "k": 5}
  known = {"history": model.current.artifacts.vocabulary.raw_ids[:3].tolist(),
           "k": 5}
  assert client.post("/v1/recommend", json=unknown).json() == {
      "items": [], "scores": [], "unknown_ids": 3, "model_version": 1}
  answers = client.post("/v1/recommend:batch",
                        json={"requests": [unknown, known]}).json()["results"]
  assert answers[0]["items"] == [] and answers[0]["unknown_ids"] == 3
  assert len(answers[1]["items"]) == 5


def test_integral_numbers_are_integers_as_json_schema_says(client, model):
  history = model.current.artifacts.vocabulary.raw_ids[:3].tolist()
  as_float = client.post("/v1/recommend", json={"history": history, "k": 7.0})
  assert len(as_float.json()["items"]) == 7
  for not_an_integer in (7.5, "7", True):
    assert client.post("/v1/recommend", json={
        "history": history, "k": not_an_integer}).status_code == 422


_RAW = object()  # stands for the first raw ids of the vocabulary


@pytest.mark.parametrize("body", [
    {"history": [_RAW], "k": 3, "exclude_history": False},
    {"history": [_RAW, "no-such-item"], "k": 4.0},
    {"history": ["no-such-item"]},
    {"history": []},
    {"history": [_RAW], "k": 0},
    {"history": [_RAW], "k": "3"},
    {"history": [_RAW], "extra": 1},
    "not an object",
])
def test_the_fast_path_answers_as_the_application_does(client, model, body):
  """A body with a declared length takes `RecommendFastPath`; the same body
  sent in chunks takes FastAPI's endpoint: same status, same JSON."""
  raw = model.current.artifacts.vocabulary.raw_ids[:3].tolist()
  if isinstance(body, dict):
    body = {**body, "history": [raw_id for entry in body["history"]
                                for raw_id in (raw if entry is _RAW
                                               else [entry])]}
  content = json.dumps(body).encode()
  headers = {"content-type": "application/json"}
  declared = client.post("/v1/recommend", content=content, headers=headers)
  chunked = client.post("/v1/recommend", content=iter([content]),
                        headers=headers)
  assert declared.status_code == chunked.status_code
  assert declared.json() == chunked.json()


def test_the_fast_path_hands_what_it_does_not_answer_to_the_application(
    model):
  """A valid body never reaches the application; an invalid one, and any
  other request, reaches it unchanged (the body replayed)."""
  reached = []

  async def application(scope, receive, send):
    message = await receive()
    reached.append((scope["path"], message["body"]))
    await responses.Response(status_code=204)(scope, receive, send)

  fast_path = service_app.RecommendFastPath(
      application, service_app.request_models(MAX_K)[0],
      RequestBatcher(model))
  valid = json.dumps({"history": model.current.artifacts.vocabulary
                      .raw_ids[:3].tolist(), "k": 2}).encode()
  client = testclient.TestClient(fast_path)  # no lifespan to run
  answer = client.post("/v1/recommend", content=valid,
                       headers={"content-type": "application/json"})
  assert answer.status_code == 200 and len(answer.json()["items"]) == 2
  assert reached == []
  for path, body, content_type in (
      ("/v1/recommend", b'{"history": []}', "application/json"),
      ("/v1/recommend", valid, "text/plain"),
      ("/v1/recommend:batch", valid, "application/json")):
    assert client.post(path, content=body, headers={
        "content-type": content_type}).status_code == 204
    assert reached.pop() == (path, body)


def _tower_raises(error):
  def setup(model, drain, monkeypatch):  # pylint: disable=unused-argument
    def fail(_):
      raise error
    monkeypatch.setattr(model.current.artifacts.user_tower, "interests", fail)
  return setup


def _draining(model, drain, monkeypatch):  # pylint: disable=unused-argument
  monkeypatch.setattr(drain, "draining", True)


_TOO_LARGE = b'{"history": ["' + b"x" * (2 << 20) + b'"]}'
_KNOWN_IDS = object()  # a body whose history the model knows


@pytest.mark.parametrize("method, path, body, setup, status", [
    ("POST", "/v1/recommend", b'{"history": ["\xff"]}', None, 400),  # not UTF-8
    ("POST", "/v1/recommend", _TOO_LARGE, None, 413),
    ("POST", "/v1/recommend:batch", iter([_TOO_LARGE]), None, 413),
    ("POST", "/v1/recommend", b"{not json", None, 422),
    ("POST", "/v1/recommend:batch", b'{"requests": [{"history": []}]}', None,
     422),
    ("POST", "/v1/recommend", _KNOWN_IDS,
     _tower_raises(RuntimeError("a bug")), 500),
    ("POST", "/v1/recommend:batch", _KNOWN_IDS,
     _tower_raises(UserTowerError("TF Serving is down")), 502),
    ("GET", "/healthz", b"", _draining, 503),
    ("GET", "/metrics", b"", _draining, 503),
    ("GET", "/no/such/path", b"", None, 404),
    ("DELETE", "/healthz", b"", None, 405),
])
def test_every_error_answer_has_the_declared_body(
    client, schema, model, drain, monkeypatch, method, path, body, setup,
    status):
  if setup is not None:
    setup(model, drain, monkeypatch)
  if body is _KNOWN_IDS:
    history = model.current.artifacts.vocabulary.raw_ids[:3].tolist()
    body = json.dumps({"history": history} if path == "/v1/recommend" else
                      {"requests": [{"history": history}]})
  answer = client.request(method, path, content=body,
                          headers={"content-type": "application/json"})
  assert answer.status_code == status
  assert answer.headers["content-type"] == "application/json"
  service_app.ErrorResponse.model_validate_json(answer.content)
  operation = schema["paths"].get(path, {}).get(method.lower())
  if operation is not None:
    declared = operation["responses"][str(status)]["content"]
    assert declared == {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorResponse"}}}
  if status == 405:
    assert answer.headers["allow"] == "GET"


@pytest.fixture(name="fuzz", scope="module")
def fixture_fuzz():
  """benchmarks/fuzz.py as a module (main is not run)."""
  return load_script("benchmarks/fuzz.py")


def test_schemathesis_finds_no_failure_and_the_service_stays_up(tiny_run,
                                                               fuzz):
  """A few hundred generated requests (schemathesis's coverage and fuzzing
  phases, positive and negative, every check) against a real server
  process; benchmarks/fuzz.py runs the same at 10,000."""
  port = _free_port()
  base = f"http://127.0.0.1:{port}"
  with _process([os.path.join("pipelines", "serve.py"), "--model-dir",
                 str(tiny_run[1]), "--port", str(port), "--max-k",
                 str(MAX_K)], f"{base}/healthz") as process:
    before = fuzz.answered_requests(base)
    report = fuzz.run_schemathesis(base, examples=60, seed=2023,
                                   timeout=300)
    requests = fuzz.requests_between(before, fuzz.answered_requests(base))
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert process.poll() is None
  assert fuzz.failures_by_check(report) == {}, report["console"]
  assert report["errors"] == [] and report["exit_code"] == 0
  assert report["test_cases"]["generated"] >= 200
  assert set(service_app.ENDPOINTS) <= set(requests)
  for endpoint in ("/v1/recommend", "/v1/recommend:batch"):
    assert {"200", "422"} <= set(requests[endpoint])
