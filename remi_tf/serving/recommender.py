"""Raw-id histories in, raw-id recommendations out: user tower, then ScaNN
per interest, merged by max score."""

import dataclasses
import itertools
from typing import List, Sequence

import numpy as np

from remi_tf.serving.artifacts import ServingArtifacts

# At most this many history items are excluded from an answer: the most
# recent distinct known ones. Each excluded id widens every interest's
# candidate list by one, so the cap bounds a request's search and merge.
MAX_EXCLUDE = 1000


class RequestError(ValueError):
  """A request the model cannot answer (a 4xx, not a server fault)."""


@dataclasses.dataclass(frozen=True)
class Query:
  """One user's request: raw-id history (oldest first), list length, and
  whether to leave the history's items out."""

  history: Sequence[str]
  k: int = 50
  exclude_history: bool = True


@dataclasses.dataclass
class Recommendation:
  """One user's answer: raw item ids, best first, their scores, and how
  many ids of the history the model does not know (they were ignored)."""

  items: List[str]
  scores: List[float]
  unknown_ids: int


class Recommender:
  """Answers recommendation requests from loaded artifacts.

  Args:
    artifacts: the loaded export.
    max_k: the largest list a request may ask for.
  """

  def __init__(self, artifacts: ServingArtifacts, max_k: int = 500):
    self.artifacts = artifacts
    self.max_k = min(max_k, len(artifacts.vocabulary))

  def recommend(self, histories: Sequence[Sequence[str]], k: int,
                exclude_history: bool = True) -> List[Recommendation]:
    """Top-k raw ids for each history (raw ids, oldest first).

    Unknown ids are dropped first; the tower sees the last seq_len known
    ones. With `exclude_history`, the last `MAX_EXCLUDE` distinct known ids
    of the history are left out of the answer.

    Raises:
      RequestError: k out of range, an empty history, or a history with no
        id the model knows.
    """
    if not 1 <= k <= self.max_k:
      raise RequestError(f"k must be between 1 and {self.max_k}, got {k}")
    vocabulary = self.artifacts.vocabulary
    known = []
    for position, history in enumerate(histories):
      if not history:
        raise RequestError(f"history {position} is empty")
      ids = vocabulary.to_ids(history)
      known.append([i for i in ids if i])
      if not known[-1]:
        raise RequestError(f"history {position}: none of its ids is known to "
                           "the model")
    interests = self.artifacts.user_tower.interests(
        [vocabulary.tower_input(ids, self.artifacts.seq_len)
         for ids in known])
    exclude = None
    if exclude_history:
      recent = [_last_distinct(ids, MAX_EXCLUDE) for ids in known]
      width = max(len(ids) for ids in recent)
      exclude = np.array([ids + [0] * (width - len(ids)) for ids in recent],
                         np.int32)
    ids, scores = self.artifacts.index.top_n(interests, k, exclude)
    answers = []
    for row_ids, row_scores, history, row_known in zip(ids, scores, histories,
                                                       known):
      found = row_ids > 0
      answers.append(Recommendation(
          items=vocabulary.to_raw(row_ids[found]),
          scores=row_scores[found].tolist(),
          unknown_ids=len(history) - len(row_known)))
    return answers


  def recommend_queries(self, queries: Sequence[Query]
                        ) -> List[Recommendation]:
    """The answers of `queries`, in order: one `recommend` call per
    distinct (k, exclude_history).

    Raises:
      RequestError: as `recommend`, for the first group holding a query
        it cannot answer.
    """
    groups = {}
    for position, query in enumerate(queries):
      groups.setdefault((query.k, query.exclude_history), []).append(position)
    answers = [None] * len(queries)
    for (k, exclude_history), positions in groups.items():
      for position, answer in zip(positions, self.recommend(
          [queries[p].history for p in positions], k, exclude_history)):
        answers[position] = answer
    return answers


def _last_distinct(ids: List[int], limit: int) -> List[int]:
  """The last `limit` distinct ids, most recent first."""
  return list(itertools.islice(dict.fromkeys(reversed(ids)), limit))
