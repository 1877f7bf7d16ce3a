"""UMI: shapes, padding, the dual-attentive routing against a NumPy
transcription of the UMI code's loop, what the user representation changes
(and that without its gates UMI is the plain capsule extraction), and a
train.py run that exports and serves."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_RUN_FLAGS, run_pipeline
from remi_tf import config, runs, serving
from remi_tf.data.inputs import evaluation_examples
from remi_tf.models import build_user_tower
from remi_tf.retrieval import exact_top_n

NUM_ITEMS, SEQ_LEN, DIM, K = 50, 8, 16, 3
# sigmoid(30) is 1 in float32, sigmoid(-30) 1e-13: a gate fixed open or shut.
OPEN, SHUT = 30.0, -30.0


def _tower():
  tf.keras.utils.set_random_seed(0)
  return build_user_tower(
      config.ModelConfig(model="umi", interests=K, embedding_dim=DIM,
                         seq_len=SEQ_LEN), NUM_ITEMS)


def _histories():
  return tf.constant([[3, 9, 4, 0, 0, 0, 0, 0],
                      [1, 2, 3, 4, 5, 6, 7, 8],
                      [7, 0, 0, 0, 0, 0, 0, 0]], tf.int32)


def _embedded(tower, histories):
  """(history embeddings [B, n, d] with padding rows zero, mask [B, n])."""
  mask = tf.cast(histories > 0, tf.float32)
  return tower.item_embedding(histories) * mask[..., None], mask


def _fix_gate(gate: tf.keras.Sequential, logit: float):
  """Makes a sigmoid output layer ignore its input: sigmoid(logit)."""
  kernel, bias = gate.layers[-1].weights
  kernel.assign(tf.zeros_like(kernel))
  bias.assign(tf.fill(bias.shape, logit))


def _squash(s):
  norm2 = np.sum(s**2, axis=-1, keepdims=True)
  return norm2 / (1 + norm2) / np.sqrt(norm2 + 1e-9) * s


def _reference_routing(history, mask, weights, kernel, initial_logits,
                       iterations=3):
  """The UMI code's `dual_softmax_routing` (bilinear_type=1) in NumPy, with
  their per-call random logits replaced by the stored draw."""
  batch, n, dim = history.shape
  predictions = (history @ kernel).reshape(batch, n, K, dim)
  predictions = predictions.transpose(0, 2, 1, 3)  # [B, K, n, d]
  logits = np.broadcast_to(initial_logits, (batch, K, n))
  for iteration in range(iterations):
    coupling = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    coupling = coupling * mask[:, None]
    interests = _squash(np.einsum("bkn,bknd->bkd",
                                  coupling * weights[:, None], predictions))
    if iteration < iterations - 1:
      logits = np.einsum("bknd,bkd->bkn", predictions, interests)
  return interests, coupling * weights[:, None]


def test_shapes_and_routing_is_each_items_weight_split_over_interests():
  tower = _tower()
  histories = _histories()
  out = tower(histories)
  assert out["interests"].shape == (3, K, DIM)
  assert out["routing"].shape == (3, K, SEQ_LEN)
  assert np.all(np.isfinite(out["interests"].numpy()))
  routing = out["routing"].numpy()
  assert np.all(routing[0, :, 3:] == 0) and np.all(routing[2, :, 1:] == 0)
  # Over the interests an item's routing weights add up to its UGA weight.
  history, mask = _embedded(tower, histories)
  encoder = tower.encoder
  profile = tf.reshape(encoder.profile(history, mask), [3, -1])
  item_weights = encoder.attention(history, profile, mask).numpy()
  np.testing.assert_allclose(routing.sum(axis=1), item_weights, atol=1e-6)
  assert np.all(item_weights[mask.numpy() > 0] > 0)


def test_padding_rows_change_nothing():
  encoder = _tower().encoder
  rng = np.random.default_rng(0)
  mask = tf.cast(_histories() > 0, tf.float32)
  real = rng.normal(size=(3, SEQ_LEN, DIM)).astype(np.float32)
  clean = real * mask.numpy()[..., None]
  garbage = np.where(mask.numpy()[..., None] > 0, real,
                     rng.normal(size=real.shape) * 5).astype(np.float32)
  for before, after in zip(encoder(tf.constant(clean), mask),
                           encoder(tf.constant(garbage), mask)):
    np.testing.assert_allclose(before.numpy(), after.numpy(), atol=1e-6)


def test_history_profile_is_the_mean_and_the_most_recent_item():
  tower = _tower()
  history, mask = _embedded(tower, _histories())
  profile = tower.encoder.profile(history, mask).numpy()
  table = tower.item_table().numpy()
  np.testing.assert_allclose(profile[0, 0], table[[3, 9, 4]].mean(axis=0),
                             atol=1e-6)
  np.testing.assert_allclose(profile[0, 1], table[4], atol=1e-6)
  np.testing.assert_allclose(profile[1, 1], table[8], atol=1e-6)
  np.testing.assert_allclose(profile[2], table[[7, 7]], atol=1e-6)
  empty = tower.encoder.profile(tf.zeros([1, SEQ_LEN, DIM]),
                                tf.zeros([1, SEQ_LEN]))
  assert np.all(empty.numpy() == 0)


def test_dual_attentive_routing_is_the_umi_codes_loop():
  tower = _tower()
  routing_layer = tower.encoder.routing
  history, mask = _embedded(tower, _histories())
  rng = np.random.default_rng(1)
  weights = rng.uniform(size=mask.shape).astype(np.float32) * mask.numpy()
  interests, routing = routing_layer(history, mask, tf.constant(weights))
  expected = _reference_routing(
      history.numpy(), mask.numpy(), weights,
      routing_layer.predictor.kernel.numpy(),
      routing_layer.initial_logits.numpy())
  np.testing.assert_allclose(interests.numpy(), expected[0], atol=1e-5)
  np.testing.assert_allclose(routing.numpy(), expected[1], atol=1e-6)


def test_an_item_weighted_zero_is_as_if_it_were_not_there():
  tower = _tower()
  routing_layer = tower.encoder.routing
  history, mask = _embedded(tower, _histories()[:2])
  weights = mask.numpy().copy()
  weights[:, 2] = 0  # the third item of both histories
  muted = routing_layer(history, mask, tf.constant(weights))
  dropped_mask = mask.numpy().copy()
  dropped_mask[:, 2] = 0
  dropped = routing_layer(history, tf.constant(dropped_mask),
                          tf.constant(dropped_mask))
  for a, b in zip(muted, dropped):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_the_user_representation_makes_same_items_differ_and_only_it():
  # The same three items in two orders: with position-free routing logits
  # the capsule extraction is order-blind, so only the user representation
  # (whose most-recent field differs) can tell the two users apart.
  tower = _tower()
  encoder = tower.encoder
  encoder.routing.initial_logits.assign(tf.zeros_like(
      encoder.routing.initial_logits))
  users = tf.constant([[3, 9, 4, 0, 0, 0, 0, 0],
                       [9, 4, 3, 0, 0, 0, 0, 0]], tf.int32)

  def relative_gap():
    interests = tower(users)["interests"].numpy()
    return (np.linalg.norm(interests[0] - interests[1])
            / np.linalg.norm(interests[0]))

  assert relative_gap() > 1e-2
  # Each user-aware part alone tells them apart: IR's field gates shut,
  # UGA still weighs the same items differently for the two users.
  _fix_gate(encoder.refinement.gate, SHUT)
  assert relative_gap() > 1e-2
  # UGA weights fixed at 1 as well: the plain extraction, the same
  # interests for both users.
  _fix_gate(encoder.attention.mlp, OPEN)
  assert relative_gap() < 1e-5
  history, mask = _embedded(tower, _histories())
  expected = _reference_routing(
      history.numpy(), mask.numpy(), mask.numpy(),
      encoder.routing.predictor.kernel.numpy(),
      encoder.routing.initial_logits.numpy())
  routing = tower(_histories())["routing"].numpy()
  np.testing.assert_allclose(routing, expected[1], atol=1e-6)


def test_refinement_gates_each_field_per_interest():
  tower = _tower()
  refinement = tower.encoder.refinement
  rng = np.random.default_rng(2)
  interests = tf.constant(rng.normal(size=(2, K, DIM)), tf.float32)
  profile = tf.constant(rng.normal(size=(2, 2, DIM)), tf.float32)
  recent_changed = profile.numpy().copy()
  recent_changed[:, 1] += 1.0
  base = refinement(interests, profile).numpy()
  assert not np.allclose(base, refinement(interests,
                                          tf.constant(recent_changed)).numpy())
  # A shut gate for every field: the refined interest ignores the profile.
  _fix_gate(refinement.gate, SHUT)
  np.testing.assert_allclose(
      refinement(interests, profile).numpy(),
      refinement(interests, tf.constant(recent_changed)).numpy(), atol=1e-6)


def test_routing_keeps_the_gradient_regularization_needs():
  tower = _tower()
  with tf.GradientTape() as tape:
    penalty = tf.reduce_sum(tf.square(tower(_histories())["routing"]))
  variables = (tower.encoder.routing.predictor.trainable_variables
               + tower.encoder.attention.trainable_variables)
  gradients = tape.gradient(penalty, variables)
  assert variables and all(g is not None and np.any(g.numpy() != 0)
                           for g in gradients)


@pytest.fixture(scope="module")
def umi_run(tmp_path_factory):
  """A tiny train.py run of UMI and its export: (run_dir, export_dir,
  cache)."""
  root = tmp_path_factory.mktemp("umi")
  run_pipeline("train.py", *TINY_RUN_FLAGS, "--model", "umi",
               "--max-steps", "40", "--eval-every", "40",
               "--output", str(root / "run"),
               "--export-dir", str(root / "export"), cache_dir=root / "cache")
  return root / "run", root / "export", root / "cache"


def test_train_py_trains_umi_as_remi_exports_and_serves(umi_run):
  run_dir, export_dir, cache = umi_run
  run_config, dataset, model, _ = runs.load_run(str(run_dir), str(cache))
  assert run_config.model.model == "umi"
  assert run_config.model.rr_lambda == config.REMI_RR_LAMBDA
  assert run_config.model.beta == config.DATASET_DEFAULTS["csv"].beta
  seq_len = run_config.model.seq_len
  histories = evaluation_examples(dataset.test, seq_len).histories[:16]
  raw = np.concatenate([[""], dataset.item_vocab])[histories]
  # The exported tower is the trained one (its stored routing draw too).
  exported = tf.saved_model.load(str(export_dir / "user_tower" / "1"))
  outputs = exported.signatures["serving_default"](history=tf.constant(raw))
  expected = model.tower(tf.constant(histories))
  for key in ("interests", "routing"):
    np.testing.assert_allclose(outputs[key].numpy(), expected[key].numpy(),
                               atol=1e-5)
  # The service's answer is the exact top 10 of the trained tower.
  real = histories[0] > 0
  recommender = serving.Recommender(serving.load_artifacts(str(export_dir)))
  answer = recommender.recommend([raw[0][real].tolist()], k=10)
  ids, _ = exact_top_n(expected["interests"][:1], model.tower.item_table(),
                       10, tf.constant(histories[0][real][None]))
  assert answer[0].items == dataset.item_vocab[ids.numpy()[0] - 1].tolist()
