"""Each tower: shapes, padding invariance, K = 1; the routing encoders'
pieces."""

import numpy as np
import pytest
import tensorflow as tf

from remi_tf import config
from remi_tf.models import build_user_tower
from remi_tf.models.capsule import squash
from remi_tf.models.self_attentive import masked_softmax

NUM_ITEMS, SEQ_LEN, DIM = 50, 8, 16
MODELS = [m for m in config.MODELS if m != "pop"]
MULTI = ("comirec-sa", "comirec-dr", "mind")


def _tower(model, interests=3):
  tf.keras.utils.set_random_seed(0)
  return build_user_tower(
      config.ModelConfig(model=model, interests=interests, embedding_dim=DIM,
                         seq_len=SEQ_LEN), NUM_ITEMS,
      item_counts=np.arange(NUM_ITEMS + 1))


def _histories():
  return tf.constant([[3, 9, 4, 0, 0, 0, 0, 0],
                      [1, 2, 3, 4, 5, 6, 7, 8],
                      [7, 0, 0, 0, 0, 0, 0, 0]], tf.int32)


@pytest.mark.parametrize("model", MODELS)
def test_shapes(model):
  k = 3 if model in MULTI else 1
  out = _tower(model)(_histories())
  assert out["interests"].shape == (3, k, DIM)
  assert out["routing"].shape == (3, k, SEQ_LEN)
  assert np.all(np.isfinite(out["interests"].numpy()))


@pytest.mark.parametrize("model", MODELS)
def test_routing_is_zero_on_padding_and_sums_to_one(model):
  routing = _tower(model)(_histories())["routing"].numpy()
  assert np.all(routing[0, :, 3:] == 0)
  assert np.all(routing[2, :, 1:] == 0)
  if model in ("comirec-sa", "comirec-dr", "mind", "youtube-dnn"):
    np.testing.assert_allclose(routing.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_padding_never_changes_the_output(model):
  tower = _tower(model)
  histories = _histories()
  before = tower(histories)
  table = tower.item_table()
  # Change what padding looks like: its embedding row.
  saved = table.numpy()
  table.assign(tf.tensor_scatter_nd_update(
      table, [[0]], tf.fill([1, DIM], 7.0)))
  after = tower(histories)
  table.assign(saved)
  for key in ("interests", "routing"):
    np.testing.assert_allclose(before[key].numpy(), after[key].numpy(),
                               atol=1e-6)


@pytest.mark.parametrize("model", MULTI)
def test_single_interest_works(model):
  out = _tower(model, interests=1)(_histories())
  assert out["interests"].shape == (3, 1, DIM)


def test_comirec_sa_interests_are_routing_times_history():
  tower = _tower("comirec-sa")
  histories = _histories()
  out = tower(histories)
  embedded = tf.gather(tower.item_table(), histories) * tf.cast(
      histories > 0, tf.float32)[..., None]
  np.testing.assert_allclose(out["interests"].numpy(),
                             tf.matmul(out["routing"], embedded).numpy(),
                             rtol=1e-5, atol=1e-6)


def test_position_embeddings_enter_routing_only():
  tower = _tower("comirec-sa")
  histories = _histories()
  tower(histories)
  positions = tower.encoder.positions
  positions.assign(positions * 0)
  flat = tower(histories)
  positions.assign(tf.random.normal(positions.shape))
  moved = tower(histories)
  # Positions change the routing but interests stay in the span of H.
  assert not np.allclose(flat["routing"], moved["routing"])
  embedded = tf.gather(tower.item_table(), histories[1])
  coefficients = moved["routing"][1]
  np.testing.assert_allclose(moved["interests"][1],
                             tf.matmul(coefficients, embedded), atol=1e-5)


def test_mind_is_deterministic_between_calls():
  tower = _tower("mind")
  a = tower(_histories())["interests"].numpy()
  b = tower(_histories())["interests"].numpy()
  np.testing.assert_array_equal(a, b)


def test_pop_ranks_by_count():
  tower = build_user_tower(config.ModelConfig(model="pop", seq_len=SEQ_LEN),
                           5, item_counts=np.array([0, 3, 9, 1, 5, 2]))
  interests = tower(_histories())["interests"]
  scores = tf.einsum("bkd,nd->bkn", interests, tower.item_table())[0, 0]
  assert list(np.argsort(-scores.numpy()[1:]) + 1) == [2, 4, 1, 5, 3]


def test_unknown_model_lists_choices():
  with pytest.raises(ValueError, match="comirec-sa"):
    build_user_tower(config.ModelConfig(model="bert4rec"), 10)


def test_masked_softmax_and_squash():
  weights = masked_softmax(tf.constant([[1.0, 5.0, 2.0]]),
                           tf.constant([[1.0, 0.0, 1.0]])).numpy()
  np.testing.assert_allclose(weights, [[np.exp(1) / (np.exp(1) + np.exp(2)),
                                        0.0,
                                        np.exp(2) / (np.exp(1) + np.exp(2))]],
                             rtol=1e-6)
  vector = tf.constant([[3.0, 4.0]])
  np.testing.assert_allclose(tf.norm(squash(vector)).numpy(), 25.0 / 26.0,
                             rtol=1e-5)


def test_embedding_initializers():
  he = build_user_tower(config.ModelConfig(
      embedding_dim=DIM, seq_len=SEQ_LEN, embedding_init="he"), 2000)
  glorot = build_user_tower(config.ModelConfig(embedding_dim=DIM,
                                               seq_len=SEQ_LEN), 2000)
  np.testing.assert_allclose(np.std(he.item_table().numpy()),
                             (2.0 / DIM)**0.5, rtol=0.05)
  np.testing.assert_allclose(np.std(glorot.item_table().numpy()),
                             (2.0 / (2001 + DIM))**0.5, rtol=0.1)
  with pytest.raises(ValueError, match="glorot"):
    build_user_tower(config.ModelConfig(embedding_init="zeros"), 10)
