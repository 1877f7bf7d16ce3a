"""Evaluation as the paper's tables compute it: exact retrieval over the
whole corpus, then Recall, HR and NDCG at each cutoff, averaged over users.

For a user with held-out targets T (repeats kept) and ranked list R:
Recall@N = |{r in R[:N] : r in T}| / |T|; HR@N = 1 if any hit;
NDCG@N = sum over hits at 0-based rank i of 1 / log2(i + 2), divided by the
same sum for that many hits at the top. NDCG follows R's true rank order
(the REMI reference code walks a Python set, so its NDCG is not comparable).
"""

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from remi_tf.data.inputs import EvaluationExamples
from remi_tf.retrieval import exact_top_n

CUTOFFS = (20, 50)
# Scores held at once by exact retrieval (users x interests x items floats):
# 2**26 floats is 256 MB.
SCORE_BUDGET = 2**26


def ranking_metrics(ranked: np.ndarray, targets: np.ndarray,
                    cutoffs: Sequence[int] = CUTOFFS) -> Dict[str, float]:
  """Recall, HR and NDCG at each cutoff, averaged over users.

  Args:
    ranked: int [U, L] recommended ids, best first, L >= max(cutoffs); 0
      marks an empty slot.
    targets: int [U, T] held-out ids, 0-padded; repeats count in |T|.
    cutoffs: the N values.

  Returns:
    {"recall@N", "hr@N", "ndcg@N"} for each N.
  """
  ranked = tf.convert_to_tensor(ranked)
  targets = tf.cast(tf.convert_to_tensor(targets), ranked.dtype)
  real = targets != 0
  hits = tf.reduce_any(tf.equal(ranked[:, :, None], targets[:, None, :])
                       & real[:, None, :], axis=2) & (ranked != 0)
  hits = tf.cast(hits, tf.float64)
  num_targets = tf.reduce_sum(tf.cast(real, tf.float64), axis=1)
  metrics = {}
  for n in cutoffs:
    top = hits[:, :n]
    discount = 1.0 / np.log2(np.arange(n) + 2.0)
    num_hits = tf.reduce_sum(top, axis=1)
    dcg = tf.reduce_sum(top * discount[None, :tf.shape(top)[1]], axis=1)
    ideal = tf.gather(np.concatenate([[0.0], np.cumsum(discount)]),
                      tf.cast(num_hits, tf.int32))
    metrics[f"recall@{n}"] = tf.reduce_mean(
        tf.math.divide_no_nan(num_hits, num_targets))
    metrics[f"hr@{n}"] = tf.reduce_mean(tf.cast(num_hits > 0, tf.float64))
    metrics[f"ndcg@{n}"] = tf.reduce_mean(tf.math.divide_no_nan(dcg, ideal))
  return {name: float(value) for name, value in metrics.items()}


def rank_by_interests(interests_of: Callable[[np.ndarray], np.ndarray],
                      item_table, histories: np.ndarray, n: int,
                      batch_size: Optional[int] = None) -> np.ndarray:
  """Exact top-n item ids for each history, by max over its interests.

  Args:
    interests_of: int [B, seq_len] histories -> float [B, K, d] interests
      (a Keras tower, an exported SavedModel, TF Serving).
    item_table: float [N + 1, d], row 0 padding.
    histories: int [U, seq_len], 0-padded.
    n: list length.
    batch_size: users per matrix product (default: as many as keep the
      [users, K, N + 1] scores within `SCORE_BUDGET`, at most 256).

  Returns:
    int32 [U, n].
  """
  item_table = tf.convert_to_tensor(item_table)
  if batch_size is None:
    num_interests = int(np.shape(interests_of(histories[:1]))[1])
    batch_size = int(np.clip(
        SCORE_BUDGET // (num_interests * item_table.shape[0]), 1, 256))
  ranked = [
      _top_ids(tf.convert_to_tensor(interests_of(histories[start:start +
                                                           batch_size])),
               item_table, tf.constant(n)).numpy()
      for start in range(0, len(histories), batch_size)]
  return np.concatenate(ranked) if ranked else np.zeros((0, n), np.int32)


@tf.function(reduce_retracing=True)
def _top_ids(interests, item_table, n):
  return exact_top_n(interests, item_table, n)[0]


def recommend(tower: tf.keras.Model, histories: np.ndarray, n: int,
              batch_size: Optional[int] = None) -> np.ndarray:
  """Exact top-n item ids for each history of a Keras user tower
  (`rank_by_interests` with the tower's interests and item table)."""
  interests = tf.function(lambda history: tower(history, training=False)[
      "interests"], reduce_retracing=True)
  return rank_by_interests(lambda batch: interests(tf.constant(batch)),
                           tower.item_table(), histories, n, batch_size)


def evaluate(tower: tf.keras.Model, examples: EvaluationExamples,
             cutoffs: Sequence[int] = CUTOFFS,
             batch_size: Optional[int] = None) -> Dict[str, float]:
  """The paper's metrics of a tower on validation or test examples."""
  ranked = recommend(tower, examples.histories, max(cutoffs), batch_size)
  return ranking_metrics(ranked, examples.targets, cutoffs)
