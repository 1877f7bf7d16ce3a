"""Concurrent single requests answered together: one user-tower call and
one ScaNN batch search for the requests waiting, as TF Serving batches
requests to its models."""

import asyncio
from typing import Callable, List, Optional, Tuple, Union

from remi_tf.serving.recommender import (Query, Recommendation, Recommender,
                                         RequestError)
from remi_tf.serving.reload import ServedModel

DEFAULT_MAX_BATCH = 64


class RequestBatcher:
  """Collects concurrent requests into batches, on the event loop.

  A request joins the pending list; one batch runs at a time and takes the
  requests pending when it starts (at most `max_batch`). With `wait_ms` 0
  it waits for no one: a lone request is answered at once, and under load
  the requests that arrive while a batch runs form the next one. A batch
  runs on the event loop (no thread hop, which costs more than the batch
  saves at low load), unless its user tower is remote (TF Serving): then it
  waits in a worker thread and the loop keeps serving. A batch reads the
  served model once, so its answers come from one version.

  Args:
    model: the served model.
    max_batch: the most requests in one batch (1: no batching).
    wait_ms: how long a batch waits for more requests after its first.
    observe_batch: called with each batch's size (e.g. a metric).
  """

  def __init__(self, model: ServedModel, max_batch: int = DEFAULT_MAX_BATCH,
               wait_ms: float = 0.0,
               observe_batch: Optional[Callable[[int], None]] = None):
    if max_batch < 1 or wait_ms < 0:
      raise ValueError(f"max_batch must be >= 1 and wait_ms >= 0, not "
                       f"{max_batch} and {wait_ms}")
    self.model = model
    self.max_batch = max_batch
    self.wait_seconds = wait_ms / 1000
    self._observe_batch = observe_batch
    self._pending: List[Tuple[Query, asyncio.Future]] = []
    self._runner: Optional[asyncio.Task] = None

  async def recommend(self, query: Query) -> Tuple[Recommendation, int]:
    """(the answer, the version that gave it) for one query.

    Raises:
      RequestError: this query cannot be answered (the others of its batch
        are answered).
      UserTowerError: the user tower failed (for the whole batch).
    """
    future = asyncio.get_running_loop().create_future()
    self._pending.append((query, future))
    if self._runner is None or self._runner.done():
      self._runner = asyncio.ensure_future(self._run())
    return await future

  async def _run(self) -> None:
    while self._pending:
      await self._gather()
      batch = self._pending[:self.max_batch]
      del self._pending[:self.max_batch]
      if self._observe_batch is not None:
        self._observe_batch(len(batch))
      queries = [query for query, _ in batch]
      recommender = self.model.current  # one version for the whole batch
      if recommender.artifacts.user_tower.remote:
        answers = await asyncio.get_running_loop().run_in_executor(
            None, _answers, recommender, queries)
      else:
        answers = _answers(recommender, queries)
      version = recommender.artifacts.version
      for (_, future), answer in zip(batch, answers):
        if future.done():  # its client went away
          continue
        if isinstance(answer, Exception):
          future.set_exception(answer)
        else:
          future.set_result((answer, version))

  async def _gather(self) -> None:
    """Lets requests join: for `wait_seconds`, or (0) until an iteration of
    the event loop adds none, so that requests already received are in."""
    if self.wait_seconds:
      await asyncio.sleep(self.wait_seconds)
      return
    while len(self._pending) < self.max_batch:
      waiting = len(self._pending)
      await asyncio.sleep(0)
      if len(self._pending) == waiting:
        return



def _answers(recommender: Recommender, queries: List[Query]
             ) -> List[Union[Recommendation, Exception]]:
  """Each query's answer, or the exception it gets."""
  try:
    return recommender.recommend_queries(queries)
  except RequestError as error:
    if len(queries) == 1:
      return [error]
    # Answered one by one, so that a bad request fails alone.
    return [answer for query in queries
            for answer in _answers(recommender, [query])]
  except Exception as error:  # pylint: disable=broad-except
    # A failure of the models is every request's answer, not the loop's.
    return [error] * len(queries)
