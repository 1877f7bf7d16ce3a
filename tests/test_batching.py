"""Request batching: concurrent single requests answered in one pass, each
exactly as alone; a bad request fails alone, a model failure fails all."""

import asyncio
import threading

import pytest

from remi_tf import serving
from remi_tf.serving.backends import UserTowerError
from remi_tf.serving.batching import RequestBatcher
from remi_tf.serving.recommender import Query


@pytest.fixture(name="model", scope="module")
def fixture_model(tiny_run):
  export_dir = str(tiny_run[1])
  return serving.ServedModel(export_dir, lambda version: serving.Recommender(
      serving.load_artifacts(export_dir, None, version)))


@pytest.fixture(name="queries", scope="module")
def fixture_queries(model):
  raw_ids = model.current.artifacts.vocabulary.raw_ids.tolist()
  return [Query(raw_ids[start:start + 5 + start % 7], k=3 + start % 4,
                exclude_history=start % 2 == 0)
          for start in range(0, 100, 10)]


def _answer_all(batcher, queries, delays=None):
  """Sends `queries` concurrently (each after its delay in seconds);
  returns each one's (answer, version) or the exception it raised."""
  async def send(query, delay):
    await asyncio.sleep(delay)
    return await batcher.recommend(query)

  async def main():
    return await asyncio.gather(
        *[send(query, delay) for query, delay in
          zip(queries, delays or [0] * len(queries))],
        return_exceptions=True)
  return asyncio.run(main())


def test_concurrent_requests_are_batched_and_answered_as_alone(model,
                                                              queries):
  sizes = []
  batcher = RequestBatcher(model, max_batch=4, observe_batch=sizes.append)
  answers = _answer_all(batcher, queries)
  assert sizes == [4, 4, 2]
  for query, (answer, version) in zip(queries, answers):
    alone = model.current.recommend([query.history], query.k,
                                    query.exclude_history)[0]
    assert answer.items == alone.items and version == 1
    assert answer.scores == pytest.approx(alone.scores, abs=1e-5)


def test_a_batch_waits_for_later_requests_only_when_asked(model, queries):
  for wait_ms, expected in ((0, [1, 1]), (200, [2])):
    sizes = []
    batcher = RequestBatcher(model, wait_ms=wait_ms,
                             observe_batch=sizes.append)
    _answer_all(batcher, queries[:2], delays=[0, 0.05])
    assert sizes == expected


def test_a_bad_request_fails_alone(model, queries):
  bad = Query(queries[2].history, k=0)
  answers = _answer_all(RequestBatcher(model), [queries[0], bad, queries[1]])
  assert isinstance(answers[1], serving.RequestError)
  assert "between 1" in str(answers[1])
  assert answers[0][0].items == model.current.recommend_queries(
      [queries[0]])[0].items
  assert len(answers[2][0].items) == queries[1].k


def test_a_model_failure_fails_every_request_of_the_batch(model, queries,
                                                         monkeypatch):
  def fail(_):
    raise UserTowerError("TF Serving is down")
  monkeypatch.setattr(model.current, "recommend_queries", fail)
  answers = _answer_all(RequestBatcher(model), queries[:3])
  assert all(isinstance(answer, UserTowerError) for answer in answers)


def test_bad_settings_are_refused(model):
  with pytest.raises(ValueError, match="max_batch"):
    RequestBatcher(model, max_batch=0)
  with pytest.raises(ValueError, match="wait_ms"):
    RequestBatcher(model, wait_ms=-1)


class _RemoteTowerWaitingForTheLoop:
  """A remote user tower (as TF Serving) that answers once the event loop
  has set `released`, and records whether that happened (5 s at most):
  called on the loop itself, it would hold the loop and wait in vain."""

  remote = True

  def __init__(self, tower):
    self.tower = tower
    self.released = threading.Event()
    self.released_by_the_loop = None

  def interests(self, histories):
    self.released_by_the_loop = self.released.wait(5)
    return self.tower.interests(histories)


def test_a_remote_tower_is_awaited_off_the_event_loop(model, queries,
                                                      monkeypatch):
  artifacts = model.current.artifacts
  tower = _RemoteTowerWaitingForTheLoop(artifacts.user_tower)
  monkeypatch.setattr(artifacts, "user_tower", tower)
  batcher = RequestBatcher(model)

  async def main():
    answer = asyncio.ensure_future(batcher.recommend(queries[0]))
    await asyncio.sleep(0.05)  # the loop runs on while the tower waits
    tower.released.set()
    return await answer

  answer, _ = asyncio.run(main())
  assert tower.released_by_the_loop
  assert answer.items == model.current.recommend_queries(
      [queries[0]])[0].items
