"""Metrics against hand-computed cases; the merge against brute force."""

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import evaluation
from remi_tf.retrieval import exact_top_n, merge_over_interests


def _pad(rows, width):
  return np.array([r + [0] * (width - len(r)) for r in rows], np.int32)


def test_metrics_hand_computed_with_repeated_targets():
  # Hits at ranks 0 (item 7) and 2 (item 5); |T| = 3 counts the repeat.
  ranked = _pad([[7, 1, 5, 2]], 50)
  targets = _pad([[5, 5, 7]], 3)
  metrics = evaluation.ranking_metrics(ranked, targets)
  dcg = 1.0 + 1.0 / np.log2(4)
  idcg = 1.0 + 1.0 / np.log2(3)
  for n in (20, 50):
    assert metrics[f"recall@{n}"] == pytest.approx(2 / 3)
    assert metrics[f"hr@{n}"] == 1.0
    assert metrics[f"ndcg@{n}"] == pytest.approx(dcg / idcg)


def test_metrics_respect_the_cutoff_and_average_over_users():
  hit_at_30 = list(range(100, 130)) + [4]  # item 4 at rank 30
  ranked = np.stack([_pad([hit_at_30], 50)[0], _pad([[4]], 50)[0]])
  targets = _pad([[4], [4, 8]], 2)
  metrics = evaluation.ranking_metrics(ranked, targets)
  assert metrics["hr@20"] == pytest.approx((0 + 1) / 2)
  assert metrics["hr@50"] == 1.0
  assert metrics["recall@20"] == pytest.approx((0 + 0.5) / 2)
  assert metrics["recall@50"] == pytest.approx((1 + 0.5) / 2)
  assert metrics["ndcg@50"] == pytest.approx((1 / np.log2(32) + 1.0) / 2)


def test_metrics_with_no_hits_and_short_lists():
  ranked = _pad([[1, 2], []], 50)  # fewer than N items, padded with 0
  targets = _pad([[3], [1]], 1)
  metrics = evaluation.ranking_metrics(ranked, targets)
  assert all(value == 0.0 for value in metrics.values())


def test_padding_in_targets_is_never_a_hit():
  ranked = _pad([[1]], 50)
  targets = np.array([[1, 0, 0]], np.int32)  # one real target
  assert evaluation.ranking_metrics(ranked, targets)["recall@20"] == 1.0


def _brute_force(interests, table, n, exclude=()):
  scores = np.einsum("kd,nd->kn", interests, table).max(axis=0)
  scores[0] = -np.inf
  scores[list(exclude)] = -np.inf
  order = np.argsort(-scores, kind="stable")[:n]
  return order, scores[order]


def test_exact_top_n_equals_brute_force_max_over_interests():
  rng = np.random.default_rng(0)
  interests = rng.normal(size=(6, 4, 8)).astype(np.float32)
  table = rng.normal(size=(301, 8)).astype(np.float32)
  ids, scores = exact_top_n(tf.constant(interests), tf.constant(table), 50)
  for user in range(6):
    expected_ids, expected_scores = _brute_force(interests[user], table, 50)
    np.testing.assert_array_equal(ids[user].numpy(), expected_ids)
    np.testing.assert_allclose(scores[user].numpy(), expected_scores,
                               rtol=1e-5)


def test_exact_top_n_with_exclusions_and_a_small_catalog():
  rng = np.random.default_rng(1)
  interests = rng.normal(size=(3, 2, 4)).astype(np.float32)
  table = rng.normal(size=(8, 4)).astype(np.float32)
  exclude = np.array([[1, 2, 0], [7, 0, 0], [3, 4, 5]], np.int32)
  ids, scores = exact_top_n(tf.constant(interests), tf.constant(table), 10,
                            tf.constant(exclude))
  for user in range(3):
    excluded = [e for e in exclude[user] if e]
    expected, _ = _brute_force(interests[user], table, 7 - len(excluded),
                               excluded)
    got = ids[user].numpy()
    np.testing.assert_array_equal(got[:len(expected)], expected)
    assert np.all(got[len(expected):] == 0)
    assert np.all(np.isneginf(scores[user].numpy()[len(expected):]))


def test_merge_removes_duplicates_keeping_the_best_score():
  ids = tf.constant([[[5, 3, 0], [3, 9, 5]]])
  scores = tf.constant([[[0.9, 0.5, 0.8], [0.7, 0.6, 0.1]]])
  merged_ids, merged_scores = merge_over_interests(ids, scores, 4)
  np.testing.assert_array_equal(merged_ids.numpy(), [[5, 3, 9, 0]])
  np.testing.assert_allclose(merged_scores.numpy()[0, :3], [0.9, 0.7, 0.6])


def _merge_reference(ids, scores, n, exclude=()):
  """Candidates by score, best first (equal scores in candidate order); the
  first of each id kept unless it is padding or excluded."""
  order = np.argsort(-scores.ravel(), kind="stable")
  kept = []
  for position in order:
    item = ids.ravel()[position]
    if item and item not in exclude and item not in [k for k, _ in kept]:
      kept.append((item, scores.ravel()[position]))
  kept = kept[:n]
  return ([k for k, _ in kept] + [0] * (n - len(kept)),
          [s for _, s in kept] + [-np.inf] * (n - len(kept)))


def test_merge_equals_a_reference_with_duplicates_ties_and_exclusions():
  rng = np.random.default_rng(2)
  ids = rng.integers(0, 40, size=(8, 3, 25)).astype(np.int32)
  scores = rng.integers(0, 10, size=(8, 3, 25)).astype(np.float32)  # ties
  exclude = _pad([list(rng.choice(40, size=e, replace=False))
                  for e in (0, 1, 5, 12, 39, 3, 3, 7)], 40)
  exclude[5, 1] = exclude[5, 0]  # a repeated exclusion
  merged_ids, merged_scores = merge_over_interests(
      tf.constant(ids), tf.constant(scores), 30, tf.constant(exclude))
  for user in range(8):
    expected_ids, expected_scores = _merge_reference(
        ids[user], scores[user], 30, set(exclude[user]) - {0})
    np.testing.assert_array_equal(merged_ids[user].numpy(), expected_ids)
    np.testing.assert_array_equal(merged_scores[user].numpy(),
                                  expected_scores)


def test_merge_memory_is_linear_in_the_candidates():
  # 4 interests x 60k candidates and 60k exclusions: a [w, w] or [w, E]
  # comparison would need tens of GB; sorting needs a few MB.
  rng = np.random.default_rng(3)
  ids = rng.integers(1, 100_000, size=(1, 4, 60_000)).astype(np.int32)
  scores = rng.normal(size=(1, 4, 60_000)).astype(np.float32)
  exclude = rng.integers(1, 100_000, size=(1, 60_000)).astype(np.int32)
  merged_ids, merged_scores = merge_over_interests(
      tf.constant(ids), tf.constant(scores), 50, tf.constant(exclude))
  best = {}
  for item, score in zip(ids.ravel(), scores.ravel()):
    if item not in best or score > best[item]:
      best[item] = score
  excluded = set(exclude.ravel())
  expected = sorted(((s, i) for i, s in best.items() if i not in excluded),
                    reverse=True)[:50]
  np.testing.assert_array_equal(merged_ids.numpy()[0],
                                [i for _, i in expected])
  np.testing.assert_array_equal(merged_scores.numpy()[0],
                                [s for s, _ in expected])
