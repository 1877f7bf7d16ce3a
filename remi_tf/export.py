"""Export of a trained tower for production.

`saved_models/<name>/`:
  user_tower/<version>/   SavedModel for TF Serving: `serving_default` takes
                          `history` tf.string [batch, seq_len] raw ids ("" and
                          unknown ids are padding) and returns `interests`
                          float32 [batch, K, d] and `routing` [batch, K,
                          seq_len]. Only core TF ops (the id lookup is a
                          StaticHashTable in the graph).
  retrieval/<version>/    SavedModel: history raw ids -> top-k raw ids and
                          scores (max over interests), exact search with
                          TFRS's BruteForce layer, so it too needs only core
                          TF ops; the history is not excluded.
  item_index/             embeddings, raw ids and a ScaNN searcher
                          (`remi_tf.index`).
  metadata.json           config, dataset statistics, test metrics, index
                          configuration and recall, library versions.

Versions are numeric folders, next = last + 1. Everything is written to a
staging folder beside the export and moved into place by renames, so a
reader never sees half a model.
"""

import json
import os
import platform
import shutil
import tempfile
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from remi_tf import __version__
from remi_tf.data import ProcessedDataset
from remi_tf.data.inputs import evaluation_examples
from remi_tf.index import IndexConfig, ItemIndex, default_config
from remi_tf.retrieval import merge_over_interests
from remi_tf.vocabulary import ItemVocabulary

USER_TOWER, RETRIEVAL, ITEM_INDEX = "user_tower", "retrieval", "item_index"
METADATA = "metadata.json"
RETRIEVAL_K = 100


class ServingUserTower(tf.Module):
  """The user tower behind a raw-id lookup, with one serving signature."""

  def __init__(self, tower: tf.keras.Model, vocabulary: ItemVocabulary,
               seq_len: int):
    super().__init__()
    self.tower = tower
    self.lookup = vocabulary.lookup_table()
    self.serve = tf.function(
        self._serve, input_signature=[
            tf.TensorSpec([None, seq_len], tf.string, name="history")])

  def _serve(self, history):
    outputs = self.tower(self.lookup.lookup(history), training=False)
    return {"interests": outputs["interests"], "routing": outputs["routing"]}


class ServingRetrieval(tf.Module):
  """History raw ids -> top-k raw ids, exact, built on TFRS's BruteForce."""

  def __init__(self, tower: tf.keras.Model, vocabulary: ItemVocabulary,
               seq_len: int, k: int):
    super().__init__()
    self.tower = tower
    self.lookup = vocabulary.lookup_table()
    embeddings = tower.item_table()[1:]
    self.k = min(k, len(vocabulary))
    self.top_k = tfrs.layers.factorized_top_k.BruteForce(k=self.k)
    self.top_k.index(tf.identity(embeddings),
                     tf.range(1, len(vocabulary) + 1, dtype=tf.int32))
    self.raw_ids = tf.constant(np.concatenate([[""], vocabulary.raw_ids]))
    self.serve = tf.function(
        self._serve, input_signature=[
            tf.TensorSpec([None, seq_len], tf.string, name="history")])

  def _serve(self, history):
    interests = self.tower(self.lookup.lookup(history),
                           training=False)["interests"]
    shape = tf.shape(interests)
    scores, ids = self.top_k(tf.reshape(interests, [-1, shape[2]]))
    ids, scores = merge_over_interests(
        tf.reshape(ids, [shape[0], shape[1], -1]),
        tf.reshape(scores, [shape[0], shape[1], -1]), self.k)
    return {"items": tf.gather(self.raw_ids, ids), "scores": scores}


def next_version(folder: str) -> int:
  """1 + the largest numeric subfolder of `folder` (1 if none)."""
  if not os.path.isdir(folder):
    return 1
  versions = [int(name) for name in os.listdir(folder) if name.isdigit()]
  return max(versions, default=0) + 1


def export_model(tower: tf.keras.Model, dataset: ProcessedDataset,
                 run_config, metrics: dict, export_dir: str,
                 index_config: Optional[IndexConfig] = None) -> dict:
  """Exports a trained tower, its item index and metadata.

  Args:
    tower: the trained user tower.
    dataset: its dataset (vocabulary; test users tune the index).
    run_config: the run's `RunConfig` (recorded in metadata).
    metrics: the run's metrics (test metrics recorded).
    export_dir: `saved_models/<name>`.
    index_config: ScaNN configuration (default: from the catalog size).

  Returns:
    The metadata written.
  """
  seq_len = run_config.model.seq_len
  vocabulary = ItemVocabulary(dataset.item_vocab)
  embeddings = tower.item_table().numpy()[1:]
  if index_config is None:
    index_config = default_config(len(embeddings))
    if embeddings.shape[1] < 2:  # asymmetric hashing needs 2+ dimensions
      index_config = IndexConfig(kind="brute_force")
  index = ItemIndex.build(embeddings, index_config)
  # Tune on validation users' interests, measure on test users'.
  queries = [tower(tf.constant(evaluation_examples(split, seq_len)
                               .histories[:1000]))["interests"].numpy()
             for split in (dataset.valid, dataset.test)]
  index.tune(*[q.reshape(-1, q.shape[-1]) for q in queries])
  interests = queries[1]

  export_dir = os.path.abspath(export_dir)
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.",
                             dir=parent)
  try:
    versions = {
        USER_TOWER: next_version(os.path.join(export_dir, USER_TOWER)),
        RETRIEVAL: next_version(os.path.join(export_dir, RETRIEVAL)),
    }
    _save(ServingUserTower(tower, vocabulary, seq_len),
          os.path.join(staging, USER_TOWER, str(versions[USER_TOWER])))
    _save(ServingRetrieval(tower, vocabulary, seq_len, RETRIEVAL_K),
          os.path.join(staging, RETRIEVAL, str(versions[RETRIEVAL])))
    index.save(os.path.join(staging, ITEM_INDEX), vocabulary.raw_ids)
    metadata = {
        "name": os.path.basename(export_dir),
        "versions": versions,
        "seq_len": seq_len,
        "interests": int(interests.shape[1]),
        "embedding_dim": int(embeddings.shape[1]),
        "num_items": len(vocabulary),
        "config": run_config.to_json(),
        "dataset": dataset.stats,
        "test_metrics": metrics.get("test", {}),
        "index": index.config.__dict__,
        "versions_of_libraries": library_versions(),
    }
    with open(os.path.join(staging, METADATA), "w") as out:
      json.dump(metadata, out, indent=2, sort_keys=True)
    _publish(staging, export_dir, versions)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return metadata


def _save(module: tf.Module, path: str) -> None:
  """Saves a serving module with its one signature."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel("ERROR")  # Keras's "non-serializable config" notes
  try:
    tf.saved_model.save(module, path,
                        signatures={"serving_default": module.serve})
  finally:
    logger.setLevel(level)


def _publish(staging: str, export_dir: str, versions: dict) -> None:
  """Moves a staged export into place, one rename per piece."""
  if not os.path.exists(export_dir):
    os.rename(staging, export_dir)
    return
  for name, version in versions.items():
    os.makedirs(os.path.join(export_dir, name), exist_ok=True)
    os.rename(os.path.join(staging, name, str(version)),
              os.path.join(export_dir, name, str(version)))
  index_dir = os.path.join(export_dir, ITEM_INDEX)
  retired = None
  if os.path.exists(index_dir):
    retired = tempfile.mkdtemp(prefix=".retired-index.", dir=export_dir)
    os.rename(index_dir, os.path.join(retired, ITEM_INDEX))
  os.rename(os.path.join(staging, ITEM_INDEX), index_dir)
  os.replace(os.path.join(staging, METADATA),
             os.path.join(export_dir, METADATA))
  if retired:
    shutil.rmtree(retired, ignore_errors=True)


def library_versions() -> dict:
  """Versions of the libraries an export depends on."""
  import scann  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  return {"remi_tf": __version__, "tensorflow": tf.__version__,
          "tf_keras": tf_keras.__version__,
          "tensorflow_recommenders": tfrs.__version__,
          "scann": getattr(scann, "__version__", "unknown"),
          "python": platform.python_version()}
