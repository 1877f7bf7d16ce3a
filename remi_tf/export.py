"""Export of a trained tower for production, as one new version of
`saved_models/<name>/` (layout and publishing order: `remi_tf.layout`):

  user_tower/<v>/    SavedModel for TF Serving: `serving_default` takes
                     `history` tf.string [batch, seq_len] raw ids, oldest
                     first, and returns `interests` float32 [batch, K, d] and
                     `routing` [batch, K, seq_len]. Unknown ids and "" are
                     dropped in the graph (the known ids move to the front,
                     in order). Only core TF ops (the id lookup is a
                     StaticHashTable in the graph). The towers that read
                     times (`config.TIME_MODELS`) also take `times` int64
                     [batch, seq_len], each item's time in seconds
                     (negative: not known); metadata "time_input" says
                     which signature a version has.
  retrieval/<v>/     SavedModel: history raw ids -> top-k raw ids and scores
                     (max over interests), exact search with TFRS's
                     BruteForce layer, so it too needs only core TF ops; the
                     history is not excluded.
  item_index/<v>/    embeddings, raw ids and a ScaNN searcher
                     (`remi_tf.index`), and the version's metadata.json:
                     config (raw file by name), the raw file's name and
                     SHA-256, dataset statistics, test metrics, index
                     configuration and recall, library versions, run id.
  metadata.json      the summary of complete versions (`layout.write_summary`).
"""

import os
import platform
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from remi_tf import __version__, layout
from remi_tf.data import ProcessedDataset
from remi_tf.data.inputs import evaluation_examples
from remi_tf.index import IndexConfig, ItemIndex, default_config
from remi_tf.retrieval import merge_over_interests
from remi_tf.vocabulary import ItemVocabulary, compact_order

RETRIEVAL_K = 100


def uses_times(tower: tf.keras.Model) -> bool:
  """Whether a tower reads the history's times (then its exports take a
  `times` input)."""
  return getattr(tower, "uses_times", False)


def _input_signature(tower: tf.keras.Model, seq_len: int) -> list:
  """`history` raw ids, and `times` for a tower that reads them."""
  signature = [tf.TensorSpec([None, seq_len], tf.string, name="history")]
  if uses_times(tower):
    signature.append(tf.TensorSpec([None, seq_len], tf.int64, name="times"))
  return signature


def _tower_outputs(tower: tf.keras.Model, lookup: tf.lookup.StaticHashTable,
                   history: tf.Tensor, times=None) -> dict:
  """The tower on raw ids: unknown ids dropped (the known ones moved to the
  front, in order, with their times)."""
  ids = lookup.lookup(history)
  order = compact_order(ids)
  if times is not None:
    times = tf.gather(times, order, batch_dims=1)
  return tower(tf.gather(ids, order, batch_dims=1), times=times,
               training=False)


class ServingUserTower(tf.Module):
  """The user tower behind a raw-id lookup, with one serving signature."""

  def __init__(self, tower: tf.keras.Model, vocabulary: ItemVocabulary,
               seq_len: int):
    super().__init__()
    self.tower = tower
    self.lookup = vocabulary.lookup_table()
    self.serve = tf.function(
        self._serve, input_signature=_input_signature(tower, seq_len))

  def _serve(self, history, times=None):
    outputs = _tower_outputs(self.tower, self.lookup, history, times)
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
        self._serve, input_signature=_input_signature(tower, seq_len))

  def _serve(self, history, times=None):
    interests = _tower_outputs(self.tower, self.lookup, history,
                               times)["interests"]
    shape = tf.shape(interests)
    scores, ids = self.top_k(tf.reshape(interests, [-1, shape[2]]))
    ids, scores = merge_over_interests(
        tf.reshape(ids, [shape[0], shape[1], -1]),
        tf.reshape(scores, [shape[0], shape[1], -1]), self.k)
    return {"items": tf.gather(self.raw_ids, ids), "scores": scores}


def export_model(tower: tf.keras.Model, dataset: ProcessedDataset,
                 run_config, metrics: dict, export_dir: str,
                 index_config: Optional[IndexConfig] = None,
                 run_id: Optional[str] = None) -> dict:
  """Exports a trained tower, its item index and metadata as the next
  version of `export_dir`.

  Args:
    tower: the trained user tower.
    dataset: its dataset (vocabulary; test users tune the index).
    run_config: the run's `RunConfig` (recorded in metadata, its raw file
      by name and content hash only).
    metrics: the run's metrics (test metrics recorded).
    export_dir: `saved_models/<name>`, new or an earlier export.
    index_config: ScaNN configuration (default: from the catalog size).
    run_id: recorded as the version's "run_id" (`layout.find_run_version`).

  Returns:
    The version's metadata, "version" included.

  Raises:
    layout.ModelFolderError: `export_dir` is not an export folder.
  """
  seq_len = run_config.model.seq_len
  vocabulary = ItemVocabulary(dataset.item_vocab)
  with layout.staging_dir(export_dir) as staging:  # fails fast on a non-export
    index, num_interests = _tuned_index(tower, dataset, seq_len, index_config)
    raw_file = (layout.file_record(run_config.raw_file)
                if run_config.raw_file else None)  # None: downloaded
    metadata = {
        "name": os.path.basename(os.path.abspath(export_dir)),
        "run_id": run_id,
        "seq_len": seq_len,
        "interests": num_interests,
        "embedding_dim": int(index.embeddings.shape[1]),
        "num_items": len(vocabulary),
        "time_input": uses_times(tower),
        "config": {**run_config.to_json(),
                   "raw_file": raw_file and raw_file["name"]},
        "raw_file": raw_file,
        "dataset": dataset.stats,
        "test_metrics": metrics.get("test", {}),
        "index": index.config.__dict__,
        "versions_of_libraries": library_versions(),
    }
    _save(ServingUserTower(tower, vocabulary, seq_len),
          os.path.join(staging, layout.USER_TOWER))
    _save(ServingRetrieval(tower, vocabulary, seq_len, RETRIEVAL_K),
          os.path.join(staging, layout.RETRIEVAL))
    index.save(os.path.join(staging, layout.ITEM_INDEX), vocabulary.raw_ids)
    version = layout.publish(staging, export_dir, metadata)
  return {**metadata, "version": version}


def _tuned_index(tower: tf.keras.Model, dataset: ProcessedDataset,
                 seq_len: int, index_config: Optional[IndexConfig]):
  """The ScaNN index of the tower's item embeddings, its search tuned on
  validation users' interests and its recall measured on test users'.

  Returns:
    (ItemIndex, number of interests K).
  """
  embeddings = tower.item_table().numpy()[1:]
  if index_config is None:
    index_config = default_config(len(embeddings))
    if embeddings.shape[1] < 2:  # asymmetric hashing needs 2+ dimensions
      index_config = IndexConfig(kind="brute_force")
  index = ItemIndex.build(embeddings, index_config)
  queries = []
  for split in (dataset.valid, dataset.test):
    examples = evaluation_examples(split, seq_len).first(1000)
    queries.append(tower(tf.constant(examples.histories), times=(
        None if examples.times is None else tf.constant(examples.times)))[
            "interests"].numpy())
  index.tune(*[q.reshape(-1, q.shape[-1]) for q in queries])
  return index, int(queries[0].shape[1])


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


def library_versions() -> dict:
  """Versions of the libraries an export depends on."""
  import scann  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  return {"remi_tf": __version__, "tensorflow": tf.__version__,
          "tf_keras": tf_keras.__version__,
          "tensorflow_recommenders": tfrs.__version__,
          "scann": getattr(scann, "__version__", "unknown"),
          "python": platform.python_version()}
