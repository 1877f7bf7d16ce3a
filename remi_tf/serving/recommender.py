"""Raw-id histories in, raw-id recommendations out: user tower, then ScaNN
per interest, merged by max score."""

import dataclasses
from typing import List, Sequence

import numpy as np

from remi_tf.serving.artifacts import ServingArtifacts
from remi_tf.vocabulary import pad_history


class RequestError(ValueError):
  """A request the model cannot answer (a 4xx, not a server fault)."""


@dataclasses.dataclass
class Recommendation:
  """One user's answer: raw item ids, best first, and their scores."""

  items: List[str]
  scores: List[float]


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

    Raises:
      RequestError: k out of range, an empty history, or a history with no
        id the model knows.
    """
    if not 1 <= k <= self.max_k:
      raise RequestError(f"k must be between 1 and {self.max_k}, got {k}")
    vocabulary = self.artifacts.vocabulary
    seq_len = self.artifacts.seq_len
    padded = []
    for position, history in enumerate(histories):
      if not history:
        raise RequestError(f"history {position} is empty")
      if not any(vocabulary.to_ids(history)):
        raise RequestError(f"history {position}: none of its ids is known to "
                           "the model")
      padded.append(pad_history(history, seq_len))
    interests = self.artifacts.user_tower.interests(padded)
    exclude = None
    if exclude_history:
      known = [[i for i in vocabulary.to_ids(h) if i] for h in histories]
      width = max(len(ids) for ids in known)
      exclude = np.array([ids + [0] * (width - len(ids)) for ids in known],
                         np.int32)
    ids, scores = self.artifacts.index.top_n(interests, k, exclude)
    answers = []
    for row_ids, row_scores in zip(ids, scores):
      found = row_ids > 0
      answers.append(Recommendation(
          items=vocabulary.to_raw(row_ids[found]),
          scores=[float(s) for s in row_scores[found]]))
    return answers
