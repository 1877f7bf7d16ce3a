"""The REMI training model: a `tfrs.Model` joining a user tower, its shared
item embeddings and a `tfrs.tasks.Retrieval` task whose loss is the sampled
softmax with IHN, plus routing regularization."""

import tensorflow as tf
import tensorflow_recommenders as tfrs

from remi_tf import losses
from remi_tf.config import CANDIDATE_SCORINGS


def hard_readout(interests: tf.Tensor, positives: tf.Tensor) -> tf.Tensor:
  """The interest closest to the positive item, per example.

  Args:
    interests: float [B, K, d].
    positives: float [B, d], the positive items' embeddings.

  Returns:
    float [B, d], interests[b, argmax_k <interests[b, k], positives[b]>].
  """
  affinity = tf.einsum("bkd,bd->bk", interests, positives)
  return tf.gather(interests, tf.argmax(affinity, axis=1), batch_dims=1)


class RetrievalModel(tfrs.Model):
  """Trains a user tower with REMI's objective.

  Candidates of a batch are its B positives followed by S negatives from
  `sampler`; each example scores its own positive and the S negatives (the
  other positives are masked out, as `tf.nn.sampled_softmax_loss` has no
  in-batch negatives), logits corrected by the log expected count when the
  sampler gives one (the uniform sampler's would be a constant). The
  accidental hits (negatives equal to the example's positive) are masked in
  the same score mask, one comparison of [B, S] ids, rather than by the
  task's `remove_accidental_hits`, which makes several passes over the
  [B, B + S] logits for the same result.

  Args:
    tower: a user tower (`call(history, times)`, `item_embedding`,
      `item_table()`).
    sampler: a `sampling.CandidateSampler` or `sampling.FullCatalog`.
    beta: IHN sharpness (0: plain sampled softmax).
    rr_lambda: weight of routing regularization (0: none).
    candidate_scoring: "positive-interest" (ComiRec, REMI): every candidate
      is scored by the interest closest to the positive (`hard_readout`);
      "max-interest" (UMI's harder negatives): each candidate by its own
      closest interest, max_k v_k . e_c, so a negative is as hard as the
      user's best-matching interest makes it. The positive's score is the
      same under both.
  """

  def __init__(self, tower: tf.keras.Model, sampler: tf.keras.layers.Layer,
               beta: float, rr_lambda: float,
               candidate_scoring: str = "positive-interest", **kwargs):
    super().__init__(**kwargs)
    if candidate_scoring not in CANDIDATE_SCORINGS:
      raise ValueError(f"unknown candidate scoring {candidate_scoring!r}; "
                       f"choose one of {', '.join(CANDIDATE_SCORINGS)}")
    self.tower = tower
    self.sampler = sampler
    self.rr_lambda = float(rr_lambda)
    self.candidate_scoring = candidate_scoring
    self.task = tfrs.tasks.Retrieval(loss=losses.SampledSoftmaxIHN(beta))
    self.trackers = {
        name: tf.keras.metrics.Mean(name=name)
        for name in ("softmax_loss", "rr_loss", "routing_max_weight",
                     "routing_entropy")
    }

  def call(self, history: tf.Tensor, times=None, training=False):
    """history int [B, n], times int64 [B, n] or None ->
    {"interests": [B, K, d], "routing": [B, K, n]}."""
    return self.tower(history, times=times, training=training)

  def compute_loss(self, features, training=False) -> tf.Tensor:
    """Mean sampled-softmax (IHN) loss + rr_lambda * routing regularizer.

    Args:
      features: {"history": int [B, n], "target": int [B]}, and "times":
        int64 [B, n] when the input holds times (for the towers that read
        them).
      training: Keras training flag.
    """
    outputs = self.tower(features["history"], times=features.get("times"),
                         training=training)
    interests, routing = outputs["interests"], outputs["routing"]
    target = tf.cast(features["target"], tf.int32)
    positives = self.tower.item_embedding(target)
    # The task scores a [B, K, d] query by the max over K ("maxsim").
    query = (interests if self.candidate_scoring == "max-interest" else
             hard_readout(interests, positives))

    candidates = self.sampler(target)
    candidate_embeddings = tf.concat(
        [positives, self.tower.item_embedding(candidates.ids)], axis=0)
    probabilities = None
    if candidates.expected_counts is not None:
      probabilities = tf.concat([candidates.positive_expected_counts,
                                 candidates.expected_counts], axis=0)
    batch = tf.shape(target)[0]
    own_positive_and_negatives = tf.concat(
        [tf.eye(batch, dtype=tf.bool),
         tf.not_equal(target[:, None], candidates.ids[None, :])], axis=1)
    softmax_loss = self.task(
        query, candidate_embeddings,
        candidate_sampling_probability=probabilities,
        score_mask=own_positive_and_negatives,
        compute_metrics=False, compute_batch_metrics=False)
    # Without RR the term is only tracked: no gradient flows through it.
    rr_loss = losses.routing_regularization(
        routing if self.rr_lambda else tf.stop_gradient(routing),
        interests.shape[-1])
    self.trackers["softmax_loss"].update_state(softmax_loss)
    self.trackers["rr_loss"].update_state(rr_loss)
    for name, value in losses.routing_diagnostics(
        tf.stop_gradient(routing)).items():
      self.trackers[name].update_state(value)
    return softmax_loss + self.rr_lambda * rr_loss
