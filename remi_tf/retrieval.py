"""Top-N retrieval for multi-interest users: each interest's candidates
merged by max score, duplicates removed. The one merge rule shared by exact
evaluation, the ScaNN index, the export and the service: in TensorFlow
(`merge_over_interests`, inside graphs and SavedModels) and in numpy
(`merge_over_interests_numpy`, for the service's ScaNN results, where a
graph call's per-op dispatch costs about 2 ms a request and numpy 0.1 ms).
Both give identical results (tested).

No training code, so a serving host can use it.
"""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

NO_ITEM = 0  # id of padding; also fills lists shorter than n


def merge_over_interests(ids: tf.Tensor, scores: tf.Tensor, n: int,
                         exclude: Optional[tf.Tensor] = None
                         ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Merges per-interest candidate lists into one top-n list per user.

  An item's score is its best score over the interests (max over
  interests); padding (id 0), duplicates and excluded ids are dropped.
  Memory is linear in w = K * M + E: duplicates are found as equal
  neighbours after sorting by id, exclusions by binary search in the
  sorted exclusion list.

  Args:
    ids: int [B, K, M], each interest's candidate ids.
    scores: float [B, K, M], their scores.
    n: list length.
    exclude: int [B, E] ids to drop per user (0 entries ignored), or None.

  Returns:
    (ids int [B, n], scores float [B, n]) best first, equal scores in
    candidate order; where fewer than n items remain, the tail is id 0 with
    score -inf.
  """
  batch = tf.shape(ids)[0]
  flat_ids = tf.reshape(ids, [batch, -1])
  flat_scores = tf.reshape(scores, [batch, -1])
  order = tf.argsort(flat_scores, axis=1, direction="DESCENDING", stable=True)
  flat_ids = tf.gather(flat_ids, order, batch_dims=1)
  flat_scores = tf.gather(flat_scores, order, batch_dims=1)
  # Stable by id after by score: each id's best candidate comes first.
  by_id = tf.argsort(flat_ids, axis=1, stable=True)
  sorted_ids = tf.gather(flat_ids, by_id, batch_dims=1)
  repeated = tf.pad(tf.equal(sorted_ids[:, 1:], sorted_ids[:, :-1]),
                    [[0, 0], [1, 0]])
  dropped = tf.gather(repeated, tf.argsort(by_id, axis=1), batch_dims=1)
  dropped |= flat_ids == NO_ITEM
  if exclude is not None:
    dropped |= _is_member(flat_ids, tf.cast(exclude, flat_ids.dtype))
  kept_scores = tf.where(dropped, tf.constant(-float("inf"),
                                              flat_scores.dtype), flat_scores)
  width = tf.shape(flat_ids)[1]
  top_scores, top = tf.math.top_k(kept_scores, k=tf.minimum(n, width))
  top_ids = tf.where(tf.math.is_finite(top_scores),
                     tf.gather(flat_ids, top, batch_dims=1),
                     tf.cast(NO_ITEM, flat_ids.dtype))
  missing = n - tf.shape(top_ids)[1]
  top_ids = tf.pad(top_ids, [[0, 0], [0, missing]])
  top_scores = tf.pad(top_scores, [[0, 0], [0, missing]],
                      constant_values=-float("inf"))
  return top_ids, top_scores


def merge_over_interests_numpy(ids: np.ndarray, scores: np.ndarray, n: int,
                               exclude: Optional[np.ndarray] = None
                               ) -> Tuple[np.ndarray, np.ndarray]:
  """`merge_over_interests` on numpy arrays, with the same results.

  Args:
    ids: int [B, K, M], each interest's candidate ids.
    scores: float [B, K, M], their scores.
    n: list length.
    exclude: int [B, E] ids to drop per user (0 entries ignored), or None.

  Returns:
    (ids int [B, n], scores float [B, n]) as `merge_over_interests`.
  """
  batch = ids.shape[0]
  rows = np.arange(batch)[:, None]
  order = np.argsort(-scores.reshape(batch, -1), axis=1, kind="stable")
  flat_ids = ids.reshape(batch, -1)[rows, order]
  flat_scores = scores.reshape(batch, -1)[rows, order]
  # np.unique keeps each (row, id) key's first, i.e. best scored, candidate.
  first = np.zeros(flat_ids.size, bool)
  first[np.unique(_row_keys(flat_ids, flat_ids.max(initial=0) + 1).ravel(),
                  return_index=True)[1]] = True
  # A candidate scored -inf is never listed, as in the TensorFlow merge.
  kept = (first.reshape(flat_ids.shape) & (flat_ids != NO_ITEM)
          & np.isfinite(flat_scores))
  if exclude is not None:
    kept &= ~is_member_of_row(
        flat_ids, np.repeat(np.arange(batch), exclude.shape[1]),
        exclude.ravel())
  # Candidates are already best first: the first n kept ones are the list.
  place = np.cumsum(kept, axis=1) - 1
  listed = kept & (place < n)
  top_ids = np.full((batch, n), NO_ITEM, flat_ids.dtype)
  top_scores = np.full((batch, n), -np.inf, flat_scores.dtype)
  slots = np.nonzero(listed)[0], place[listed]
  top_ids[slots] = flat_ids[listed]
  top_scores[slots] = flat_scores[listed]
  return top_ids, top_scores


def is_member_of_row(values: np.ndarray, member_rows: np.ndarray,
                     members: np.ndarray) -> np.ndarray:
  """bool [B, W]: whether values[b, w] is among row b's members.

  Args:
    values: int (>= 0) [B, W].
    member_rows: int [M], the row each member belongs to.
    members: int (>= 0) [M].

  Each (row, id) pair becomes one int64 key and the keys are matched by
  sorting, so memory is linear in B * W + M (no [B, W, M] comparison).
  """
  span = int(max(values.max(initial=0), members.max(initial=0))) + 1
  return np.isin(_row_keys(values, span),
                 np.asarray(member_rows, np.int64) * span + members,
                 kind="sort")


def _row_keys(values: np.ndarray, span: int) -> np.ndarray:
  """int64 [B, W]: b * span + values[b, w], one key per (row, value)."""
  return np.arange(len(values), dtype=np.int64)[:, None] * span + values


def _is_member(values: tf.Tensor, members: tf.Tensor) -> tf.Tensor:
  """bool [B, W]: whether values[b, w] is in members[b] (int [B, E]), by
  binary search, so memory is linear in W + E. NO_ITEM always counts as a
  member, which is harmless as padding is dropped anyway."""
  members = tf.sort(tf.pad(members, [[0, 0], [1, 0]]), axis=1)
  position = tf.minimum(tf.searchsorted(members, values),
                        tf.shape(members)[1] - 1)
  return tf.equal(tf.gather(members, position, batch_dims=1), values)


def exact_top_n(interests: tf.Tensor, item_table: tf.Tensor, n: int,
                exclude: Optional[tf.Tensor] = None
                ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Exact top-n over the whole corpus by max over interests.

  Each item's best score over the interests is taken first and ranked by
  one `top_k`: the same list as each interest's top-n merged by max (an
  item in the top-n by best score is in the top-n of the interest that
  gives its best), with a quarter of the sorting at K = 4.

  Args:
    interests: float [B, K, d].
    item_table: float [N + 1, d], row 0 padding (never returned).
    n: list length.
    exclude: optional int [B, E] ids to leave out (0 entries ignored).

  Returns:
    (ids int32 [B, n], scores float [B, n]) best first, equal scores by
    id; where fewer than n items remain, the tail is id 0 with score -inf.
  """
  return exact_top_n_by_columns(interests, tf.transpose(item_table), n,
                                exclude)


def exact_top_n_by_columns(interests: tf.Tensor, item_columns: tf.Tensor,
                           n: int, exclude: Optional[tf.Tensor] = None
                           ) -> Tuple[tf.Tensor, tf.Tensor]:
  """`exact_top_n` against the transposed item table, float [d, N + 1]:
  TF's CPU matmul against it is about a third faster than against the
  table itself, so a caller scoring many batches transposes it once
  (`evaluation.rank_by_interests`)."""
  batch, num_interests = tf.shape(interests)[0], tf.shape(interests)[1]
  num_rows = tf.shape(item_columns)[1]
  scores = tf.matmul(tf.reshape(interests, [batch * num_interests,
                                            tf.shape(item_columns)[0]]),
                     item_columns)
  best = tf.reduce_max(tf.reshape(scores, [batch, num_interests, num_rows]),
                       axis=1)
  removed = [tf.stack([tf.range(batch), tf.fill([batch], NO_ITEM)], axis=1)]
  if exclude is not None:
    exclude = tf.cast(exclude, tf.int32)
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(exclude))
    removed.append(tf.boolean_mask(tf.stack([rows, exclude], axis=2),
                                   exclude != NO_ITEM))
  removed = tf.concat(removed, axis=0)
  best = tf.tensor_scatter_nd_update(
      best, removed, tf.fill([tf.shape(removed)[0]],
                             tf.constant(-float("inf"), best.dtype)))
  top_scores, top_ids = tf.math.top_k(best, k=tf.minimum(n, num_rows))
  top_ids = tf.where(tf.math.is_finite(top_scores), top_ids, NO_ITEM)
  missing = n - tf.shape(top_ids)[1]
  return (tf.pad(top_ids, [[0, 0], [0, missing]]),
          tf.pad(top_scores, [[0, 0], [0, missing]],
                 constant_values=-float("inf")))
