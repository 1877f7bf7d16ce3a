"""The loss against its references: tf.nn.sampled_softmax_loss, a NumPy
Algorithm 1, and a NumPy routing regularizer."""

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import losses
from remi_tf.models import sampling

NUM_ITEMS, DIM, BATCH, NEGATIVES = 60, 8, 16, 40


def numpy_algorithm1(positive, negatives, valid, beta):
  """REMI Algorithm 1 in float64: imp = exp(beta s), Ng = sum(imp e^s) /
  mean(imp), loss = -log(e^s+ / (e^s+ + Ng)), negatives where `valid`."""
  out = []
  for s_pos, s_neg, ok in zip(positive, negatives, valid):
    s = s_neg[ok].astype(np.float64)
    imp = np.exp(beta * s)
    ng = np.sum(imp * np.exp(s)) / np.mean(imp)
    out.append(-np.log(np.exp(s_pos) / (np.exp(s_pos) + ng)))
  return np.array(out)


def _problem(seed):
  rng = np.random.default_rng(seed)
  table = tf.constant(rng.normal(size=(NUM_ITEMS + 1, DIM)), tf.float32)
  queries = tf.constant(rng.normal(size=(BATCH, DIM)), tf.float32)
  # Positives among the most popular ids, so log-uniform samples hit them.
  positives = tf.constant(rng.integers(1, 6, size=BATCH), tf.int32)
  return table, queries, positives


def _our_loss(table, queries, positives, sampled_values, beta):
  """Our loss through the task's layout: [positives; negatives] columns."""
  sampled, true_expected, sampled_expected = sampled_values
  ids = tf.concat([positives, tf.cast(sampled, tf.int32) + 1], 0)
  scores = tf.matmul(queries, tf.gather(table, ids), transpose_b=True)
  log_q = tf.math.log(tf.concat([tf.reshape(true_expected, [-1]),
                                 sampled_expected], 0))
  scores -= log_q
  labels = tf.eye(BATCH, BATCH + NEGATIVES)
  own = tf.concat([tf.eye(BATCH, dtype=tf.bool),
                   tf.ones([BATCH, NEGATIVES], tf.bool)], 1)
  hit = tf.equal(positives[:, None], ids[None, :]) & (labels == 0)
  scores = tf.where(own & ~hit, scores, losses.MIN_FLOAT)
  return losses.SampledSoftmaxIHN(beta)(labels, scores), scores, labels


@pytest.mark.parametrize("distribution", ["uniform", "log-uniform"])
def test_beta_zero_equals_tf_sampled_softmax(distribution):
  table, queries, positives = _problem(0)
  sampler = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, distribution,
                                      seed=3)
  sampled_values = sampler.sample(positives)
  hits = np.isin(positives.numpy() - 1, sampled_values[0].numpy())
  assert hits.any(), "the sample must contain accidental hits"
  reference = tf.reduce_mean(tf.nn.sampled_softmax_loss(
      weights=table[1:], biases=tf.zeros(NUM_ITEMS),
      labels=tf.cast(positives[:, None] - 1, tf.int64), inputs=queries,
      num_sampled=NEGATIVES, num_classes=NUM_ITEMS,
      sampled_values=sampled_values, remove_accidental_hits=True))
  ours, _, _ = _our_loss(table, queries, positives, sampled_values, 0.0)
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0, 4.0, 10.0])
def test_ihn_matches_numpy_algorithm1(beta):
  table, queries, positives = _problem(1)
  sampler = sampling.CandidateSampler(NUM_ITEMS, NEGATIVES, "log-uniform",
                                      seed=5)
  ours, scores, labels = _our_loss(table, queries, positives,
                                   sampler.sample(positives), beta)
  scores, labels = scores.numpy(), labels.numpy()
  positive = scores[labels > 0]
  valid = (labels == 0) & (scores > losses.REMOVED_LOGIT)
  reference = numpy_algorithm1(positive, scores, valid, beta).mean()
  np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)


def test_ihn_is_finite_with_large_beta_and_logits():
  logits = tf.constant([[300.0, -250.0, 280.0, 120.0],
                        [-400.0, 390.0, 10.0, 0.0]])
  mask = tf.constant([[False, True, True, True], [False, True, True, True]])
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = losses.ihn_softmax_cross_entropy(logits[:, 0], logits, mask, 10.0)
  gradient = tape.gradient(loss, logits)
  assert np.all(np.isfinite(loss.numpy()))
  assert np.all(np.isfinite(gradient.numpy()))
  # The second example's positive is far below a negative: a large loss.
  assert loss.numpy()[1] > 100


def test_hard_negatives_weigh_more_with_larger_beta():
  positive = tf.constant([1.0])
  logits = tf.constant([[1.0, 2.0, -2.0, -2.0, -2.0]])
  mask = tf.constant([[False, True, True, True, True]])
  values = [losses.ihn_softmax_cross_entropy(positive, logits, mask, b)
            .numpy()[0] for b in (0.0, 1.0, 4.0)]
  assert values[0] < values[1] < values[2]


def numpy_routing_regularization(routing, dim):
  total = 0.0
  for user in routing:  # [K, n]
    a = user.T  # [n, K]
    centered = a - a.mean(axis=0, keepdims=True)
    c = centered.T @ centered / dim
    total += np.sum(np.diag(c) ** 2)
  return total


def test_routing_regularization_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5, 4, 12)) * 3
  routing = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  ours = losses.routing_regularization(tf.constant(routing, tf.float32), 64)
  np.testing.assert_allclose(ours.numpy(),
                             numpy_routing_regularization(routing, 64),
                             rtol=1e-5)


def test_routing_regularization_penalizes_collapse():
  n = 10
  uniform = np.full((1, 2, n), 1.0 / n)
  collapsed = np.zeros((1, 2, n))
  collapsed[..., 0] = 1.0
  assert losses.routing_regularization(tf.constant(uniform), 8) == 0.0
  assert losses.routing_regularization(tf.constant(collapsed), 8) > 0.0


def test_routing_diagnostics_separate_spread_from_collapse():
  n = 8
  uniform = tf.fill([2, 3, n], 1.0 / n)
  collapsed = tf.one_hot(tf.zeros([2, 3], tf.int32), n)
  spread = losses.routing_diagnostics(uniform)
  peaked = losses.routing_diagnostics(collapsed)
  np.testing.assert_allclose(spread["routing_max_weight"], 1.0 / n, rtol=1e-6)
  np.testing.assert_allclose(spread["routing_entropy"], np.log(n), rtol=1e-6)
  np.testing.assert_allclose(peaked["routing_max_weight"], 1.0)
  np.testing.assert_allclose(peaked["routing_entropy"], 0.0, atol=1e-7)
