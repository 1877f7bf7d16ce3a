"""Raw-id histories in, raw-id recommendations out: user tower, then ScaNN
per interest, merged by max score."""

import dataclasses
import itertools
from typing import List, Optional, Sequence, Tuple

import numpy as np

from remi_tf.serving.artifacts import ServingArtifacts
from remi_tf.vocabulary import NO_TIME

# At most this many history items are excluded from an answer: the most
# recent distinct known ones. Each excluded id widens every interest's
# candidate list by one, so the cap bounds a request's search and merge.
MAX_EXCLUDE = 1000


class RequestError(ValueError):
  """A request the model cannot answer (a 4xx, not a server fault)."""


@dataclasses.dataclass(frozen=True)
class Query:
  """One user's request: raw-id history (oldest first), list length,
  whether to leave the history's items out, and the history's times
  (seconds, `times[i]` of `history[i]`; None: no time information)."""

  history: Sequence[str]
  k: int = 50
  exclude_history: bool = True
  times: Optional[Sequence[int]] = None


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
    max_k: the largest list a request may ask for (an index of fewer
      items answers with all of them).
  """

  def __init__(self, artifacts: ServingArtifacts, max_k: int = 500):
    self.artifacts = artifacts
    self.max_k = max_k

  def recommend(self, histories: Sequence[Sequence[str]], k: int,
                exclude_history: bool = True,
                times: Optional[Sequence[Optional[Sequence[int]]]] = None
                ) -> List[Recommendation]:
    """Top-k raw ids for each history (raw ids, oldest first).

    Unknown ids are dropped first (with their times); the tower sees the
    last seq_len known ones. With `exclude_history`, the last `MAX_EXCLUDE`
    distinct known ids of the history are left out of the answer. An
    answer is shorter than k when the index holds fewer items (after the
    exclusions), and empty for a history with no id the model knows (all
    of them counted in `unknown_ids`).

    `times[u]` holds the times of history u's items in seconds (`times[u][i]`
    of `histories[u][i]`), or None: no time information. A list shorter
    than its history leaves the later items without a time; times past the
    history's end are ignored. Only a version whose tower takes times
    (`ServingArtifacts.time_input`) reads them.

    Raises:
      RequestError: k out of 1..max_k, or an empty history.
    """
    if not 1 <= k <= self.max_k:
      raise RequestError(f"k must be between 1 and {self.max_k}, got {k}")
    vocabulary = self.artifacts.vocabulary
    reads_times = self.artifacts.time_input
    known, known_times = [], []
    for position, history in enumerate(histories):
      if not history:
        raise RequestError(f"history {position} is empty")
      ids = vocabulary.to_ids(history)
      known.append([i for i in ids if i])
      if reads_times:
        item_times = _item_times(times[position] if times else None,
                                 len(ids))
        known_times.append([t for i, t in zip(ids, item_times) if i])
    answers = [Recommendation([], [], len(history)) for history in histories]
    rows = [row for row, ids in enumerate(known) if ids]
    if not rows:
      return answers
    ids, scores = self._top_n(
        [known[row] for row in rows], min(k, len(vocabulary)),
        exclude_history,
        [known_times[row] for row in rows] if reads_times else None)
    for row, row_ids, row_scores in zip(rows, ids, scores):
      found = row_ids > 0
      answers[row] = Recommendation(
          items=vocabulary.to_raw(row_ids[found]),
          scores=row_scores[found].tolist(),
          unknown_ids=len(histories[row]) - len(known[row]))
    return answers

  def _top_n(self, known: List[List[int]], n: int, exclude_history: bool,
             known_times: Optional[List[List[int]]]
             ) -> Tuple[np.ndarray, np.ndarray]:
    """(item ids int32 [B, n], scores float32 [B, n]) for B histories of
    known item ids (each non-empty) and, for a tower that reads them, their
    times (else None), as `ItemIndex.top_n`."""
    vocabulary, seq_len = self.artifacts.vocabulary, self.artifacts.seq_len
    histories = [vocabulary.tower_input(ids, seq_len) for ids in known]
    if known_times is not None:
      interests = self.artifacts.user_tower.interests(
          histories, [_tower_times(row, seq_len) for row in known_times])
    else:
      interests = self.artifacts.user_tower.interests(histories)
    exclude = None
    if exclude_history:
      recent = [_last_distinct(ids, MAX_EXCLUDE) for ids in known]
      width = max(len(ids) for ids in recent)
      exclude = np.array([ids + [0] * (width - len(ids)) for ids in recent],
                         np.int32)
    return self.artifacts.index.top_n(interests, n, exclude)

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
          [queries[p].history for p in positions], k, exclude_history,
          [queries[p].times for p in positions])):
        answers[position] = answer
    return answers


def _item_times(times: Optional[Sequence[int]], length: int) -> List[int]:
  """The times of a history's `length` items: `times` cut to that length,
  the items past its end (all of them for None) at `NO_TIME`."""
  given = list(times or [])[:length]
  return given + [NO_TIME] * (length - len(given))


def _tower_times(times: List[int], seq_len: int) -> List[int]:
  """The times of `ItemVocabulary.tower_input`'s items: those of the last
  `seq_len` known ids, 0 at padding."""
  kept = times[-seq_len:] if seq_len else []
  return kept + [0] * (seq_len - len(kept))


def _last_distinct(ids: List[int], limit: int) -> List[int]:
  """The last `limit` distinct ids, most recent first."""
  return list(itertools.islice(dict.fromkeys(reversed(ids)), limit))
