"""Evaluation as the paper's tables compute it: exact retrieval over the
whole corpus, then Recall, HR and NDCG at each cutoff, averaged over users.

For a user with held-out targets T (repeats kept) and ranked list R:
Recall@N = |{r in R[:N] : r in T}| / |T|; HR@N = 1 if any hit;
NDCG@N = sum over hits at 0-based rank i of 1 / log2(i + 2), divided by the
same sum for that many hits at the top. NDCG follows R's true rank order
(the REMI reference code walks a Python set, so its NDCG is not comparable).
"""

import collections
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from remi_tf import threads
from remi_tf.data.inputs import EvaluationExamples
from remi_tf.retrieval import exact_top_n_by_columns, is_member_of_row

CUTOFFS = (20, 50)
# Scores held at once by exact retrieval (users x interests x items floats):
# 2**26 floats is 256 MB.
SCORE_BUDGET = 2**26
# Users whose metrics are computed at once.
METRICS_BATCH = 4096


def ranking_metrics(ranked: np.ndarray, target_offsets: np.ndarray,
                    target_items: np.ndarray,
                    cutoffs: Sequence[int] = CUTOFFS,
                    batch_size: int = METRICS_BATCH) -> Dict[str, float]:
  """Recall, HR and NDCG at each cutoff, averaged over users.

  Users are scored `batch_size` at a time, so memory grows with the batch's
  ranked lists and targets, never with users x longest target list.

  Args:
    ranked: int [U, L] recommended ids, best first, L >= max(cutoffs); 0
      marks an empty slot.
    target_offsets: int64 [U + 1]; user u's held-out ids are
      `target_items[target_offsets[u]:target_offsets[u + 1]]`.
    target_items: int [total targets] held-out ids (1..N); repeats count in
      |T|.
    cutoffs: the N values.
    batch_size: users scored at once.

  Returns:
    {"recall@N", "hr@N", "ndcg@N"} for each N.
  """
  ranked = np.asarray(ranked)
  target_offsets = np.asarray(target_offsets, np.int64)
  target_items = np.asarray(target_items)
  sums = collections.defaultdict(float)
  for start in range(0, len(ranked), batch_size):
    stop = min(start + batch_size, len(ranked))
    first, last = target_offsets[start], target_offsets[stop]
    batch = _user_metrics(ranked[start:stop],
                          target_offsets[start:stop + 1] - first,
                          target_items[first:last], cutoffs)
    for name, values in batch.items():
      sums[name] += float(np.sum(values))
  return {name: sums[name] / len(ranked)
          for n in cutoffs for name in (f"recall@{n}", f"hr@{n}", f"ndcg@{n}")}


def _user_metrics(ranked: np.ndarray, target_offsets: np.ndarray,
                  target_items: np.ndarray,
                  cutoffs: Sequence[int]) -> Dict[str, np.ndarray]:
  """float64 [B] Recall, HR and NDCG at each cutoff of B users, from their
  ranked [B, L] lists and CSR targets (offsets [B + 1] from 0)."""
  num_targets = np.diff(target_offsets)
  # A ranked id is a hit if its user holds it among the targets.
  hits = is_member_of_row(ranked, np.repeat(np.arange(len(ranked)),
                                            num_targets),
                          target_items) & (ranked != 0)
  metrics = {}
  for n in cutoffs:
    top = hits[:, :n].astype(np.float64)
    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    ideal_of = np.concatenate([[0.0], np.cumsum(discount)])
    num_hits = top.sum(axis=1)
    dcg = top @ discount
    ideal = ideal_of[num_hits.astype(np.int64)]
    metrics[f"recall@{n}"] = np.divide(num_hits, num_targets,
                                       out=np.zeros_like(num_hits),
                                       where=num_targets > 0)
    metrics[f"hr@{n}"] = (num_hits > 0).astype(np.float64)
    metrics[f"ndcg@{n}"] = np.divide(dcg, ideal, out=np.zeros_like(dcg),
                                     where=ideal > 0)
  return metrics


def rank_by_interests(
    interests_of: Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray],
    item_table, histories: np.ndarray, n: int,
    batch_size: Optional[int] = None,
    times: Optional[np.ndarray] = None) -> np.ndarray:
  """Exact top-n item ids for each history, by max over its interests.

  Args:
    interests_of: (int [B, seq_len] histories, int64 [B, seq_len] times or
      None) -> float [B, K, d] interests (a Keras tower, an exported
      SavedModel, TF Serving).
    item_table: float [N + 1, d], row 0 padding.
    histories: int [U, seq_len], 0-padded.
    n: list length.
    batch_size: users per matrix product (default: as many as keep the
      [users, K, N + 1] scores within `SCORE_BUDGET`, at most 256).
    times: int64 [U, seq_len], the histories' times, or None.

  Returns:
    int32 [U, n].
  """
  def interests(start: int, stop: int):
    return interests_of(histories[start:stop],
                        None if times is None else times[start:stop])

  item_table = tf.convert_to_tensor(item_table)
  if batch_size is None:
    num_interests = int(np.shape(interests(0, 1))[1])
    batch_size = int(np.clip(
        SCORE_BUDGET // (num_interests * item_table.shape[0]), 1, 256))
  item_columns = tf.transpose(item_table)  # once, for every batch
  ranked = [
      _top_ids(tf.convert_to_tensor(interests(start, start + batch_size)),
               item_columns, tf.constant(n)).numpy()
      for start in range(0, len(histories), batch_size)]
  return np.concatenate(ranked) if ranked else np.zeros((0, n), np.int32)


@tf.function(reduce_retracing=True)
def _top_ids(interests, item_columns, n):
  return threads.in_halves(
      lambda half: exact_top_n_by_columns(half, item_columns, n)[0],
      interests)


def recommend(tower: tf.keras.Model, histories: np.ndarray, n: int,
              batch_size: Optional[int] = None,
              times: Optional[np.ndarray] = None) -> np.ndarray:
  """Exact top-n item ids for each history (and its times, if given) of a
  Keras user tower (`rank_by_interests` with the tower's interests and item
  table)."""
  interests = tf.function(lambda history, times: tower(
      history, times=times, training=False)["interests"],
                          reduce_retracing=True)
  return rank_by_interests(
      lambda batch, batch_times: interests(
          tf.constant(batch),
          None if batch_times is None else tf.constant(batch_times)),
      tower.item_table(), histories, n, batch_size, times)


def evaluate(tower: tf.keras.Model, examples: EvaluationExamples,
             cutoffs: Sequence[int] = CUTOFFS,
             batch_size: Optional[int] = None) -> Dict[str, float]:
  """The paper's metrics of a tower on validation or test examples (with
  their times when they hold them)."""
  ranked = recommend(tower, examples.histories, max(cutoffs), batch_size,
                     examples.times)
  return ranking_metrics(ranked, examples.target_offsets,
                         examples.target_items, cutoffs)
