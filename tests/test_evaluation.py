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
