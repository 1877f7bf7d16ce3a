"""Evaluating an export on the dataset it was trained on: one version's
SavedModel user tower and item embeddings, read through `remi_tf.layout`
(no serving code, no ScaNN), exact search, the paper's metrics."""

import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from remi_tf import evaluation, layout
from remi_tf.data import ProcessedDataset, load_dataset
from remi_tf.data.inputs import evaluation_examples


class RawFileError(ValueError):
  """The raw file an export was trained on is not given, or the file given
  is another one."""


def raw_file_of_export(metadata: dict, raw_file: Optional[str]
                       ) -> Optional[str]:
  """The raw file to rebuild an export's dataset from.

  An export names its raw file only by name and SHA-256 (None: the dataset
  was downloaded, and is again, through the cache).

  Args:
    metadata: the version's metadata.
    raw_file: a local copy of the raw file, or None.

  Returns:
    `raw_file`, checked against the recorded hash; None to download.

  Raises:
    RawFileError: the export needs a local file and none is given, or the
      file's content is not the one the export was trained on.
  """
  record = metadata.get("raw_file")
  if raw_file is None:
    if record is None:
      return None
    raise RawFileError(
        f"the export was trained on the local file {record['name']} "
        f"(sha256 {record['sha256']}); pass it with --raw-file PATH")
  if not os.path.isfile(raw_file):
    raise RawFileError(f"--raw-file {raw_file}: no such file")
  if record is not None:
    found = layout.sha256_of_file(raw_file)
    if found != record["sha256"]:
      raise RawFileError(
          f"--raw-file {raw_file} (sha256 {found}) is not the file the "
          f"export was trained on: {record['name']} (sha256 "
          f"{record['sha256']})")
  return raw_file


def dataset_of_export(metadata: dict, raw_ids: np.ndarray,
                      raw_file: Optional[str] = None,
                      cache_dir: Optional[str] = None) -> ProcessedDataset:
  """The dataset an export was trained on, rebuilt from its metadata (raw
  file and protocol, through the cache).

  Args:
    metadata: the version's metadata.
    raw_ids: str [N], the export's item raw ids; the dataset must have
      exactly these.
    raw_file: a local copy of the raw file (`raw_file_of_export`).
    cache_dir: download/preprocessing cache.

  Raises:
    RawFileError: as `raw_file_of_export`.
    ValueError: the dataset's items are not the export's.
  """
  config = metadata["config"]
  dataset = load_dataset(config["dataset"],
                         raw_file_of_export(metadata, raw_file),
                         config["threshold"], cache_dir=cache_dir,
                         times=metadata.get("time_input", False))
  if not np.array_equal(dataset.item_vocab, np.asarray(raw_ids).astype(str)):
    raise ValueError("the export was not trained on this dataset's items")
  return dataset


def evaluate_export(model_dir: str, split: str = "test",
                    raw_file: Optional[str] = None,
                    cache_dir: Optional[str] = None,
                    version: Optional[int] = None) -> Dict[str, float]:
  """The paper's metrics of an export version (its SavedModel user tower
  and its item embeddings, exact search) on a split of its dataset (with
  the histories' times for a version that takes them).

  Args:
    model_dir: `saved_models/<name>`.
    split: "valid" or "test".
    raw_file: a local copy of the raw file (`raw_file_of_export`).
    cache_dir: download/preprocessing cache.
    version: the version to evaluate; default the newest complete one.

  Raises:
    layout.ModelFolderError: not an export, or a piece is unreadable.
    RawFileError, ValueError: as `dataset_of_export`.
  """
  version = layout.resolve_version(model_dir, version)
  metadata = layout.read_metadata(model_dir, version)
  index_dir = layout.piece_dir(model_dir, layout.ITEM_INDEX, version)
  tower_dir = layout.piece_dir(model_dir, layout.USER_TOWER, version)
  try:
    embeddings = np.load(os.path.join(index_dir, layout.EMBEDDINGS))
    raw_ids = np.load(os.path.join(index_dir, layout.RAW_IDS))
  except (OSError, ValueError) as error:
    raise layout.ModelFolderError(f"{index_dir} is unreadable: {error}"
                                  ) from None
  dataset = dataset_of_export(metadata, raw_ids, raw_file, cache_dir)
  try:
    serve = tf.saved_model.load(tower_dir).signatures["serving_default"]
  except Exception as error:  # TensorFlow raises many types on bad files
    raise layout.ModelFolderError(
        f"{tower_dir} is not a loadable SavedModel: "
        f"{type(error).__name__}: {error}") from None
  examples = evaluation_examples(getattr(dataset, split),
                                 int(metadata["seq_len"]))
  raw = np.concatenate([[""], raw_ids.astype(str)])
  table = np.concatenate([np.zeros_like(embeddings[:1]), embeddings])
  def interests(batch, times):
    if times is None:
      return serve(history=tf.constant(raw[batch]))["interests"]
    return serve(history=tf.constant(raw[batch]),
                 times=tf.constant(times))["interests"]

  ranked = evaluation.rank_by_interests(
      interests, table, examples.histories, max(evaluation.CUTOFFS),
      times=examples.times)
  return evaluation.ranking_metrics(ranked, examples.target_offsets,
                                    examples.target_items)
