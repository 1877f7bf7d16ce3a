"""Datasets: raw formats, the ComiRec protocol, the cache, tf.data input.

`load_dataset` is the one entry point: raw file (downloaded or given) ->
protocol -> cached `ProcessedDataset`.
"""

import dataclasses
import logging
import os
from typing import Optional

from remi_tf import config
from remi_tf.data import cache, download, registry
from remi_tf.data.download import DownloadError
from remi_tf.data.parsing import RawFormatError
from remi_tf.data.protocol import (EmptyDatasetError, ProcessedDataset,
                                   UserSequences, preprocess)
from remi_tf.data.registry import SOURCES

DATASETS = tuple(SOURCES)
# What bad input raises: pipelines report these as one-line errors.
INPUT_ERRORS = (DownloadError, RawFormatError, EmptyDatasetError,
                FileNotFoundError, ValueError)
_log = logging.getLogger(__name__)


def load_dataset(name: str, raw_file: Optional[str] = None,
                 threshold: Optional[int] = None,
                 seed: int = config.SPLIT_SEED,
                 cache_dir: Optional[str] = None,
                 times: bool = False) -> ProcessedDataset:
  """Loads a dataset through the ComiRec protocol, from cache when possible.

  Args:
    name: one of `DATASETS`.
    raw_file: a local copy of the raw file; when None, the copy shipped
      with the package (books-sample) or else a download.
    threshold: item/user filter threshold (default: the dataset's).
    seed: seed of the user split.
    cache_dir: where downloads and preprocessed data are kept (default
      `$REMI_TF_HOME` or `~/.cache/remi-tf`).
    times: whether to load the interactions' times (`UserSequences.times`;
      the time-aware towers read them), else they are left out (None).

  Returns:
    The processed dataset; its `stats` are also logged.
  """
  spec = registry.source(name)
  if threshold is None:
    threshold = config.DATASET_DEFAULTS[name].threshold
  home = download.cache_home(cache_dir)
  if raw_file is None:
    raw_file = spec.packaged or download.fetch(
        name, spec, os.path.join(home, "downloads"))
  elif not os.path.isfile(raw_file):
    raise FileNotFoundError(f"--raw-file {raw_file}: no such file")
  key = cache.cache_key(raw_file, dataset=name, threshold=threshold, seed=seed)
  path = os.path.join(home, "preprocessed", f"{name}-{key}.npz")
  if os.path.exists(path):
    dataset = cache.load(path, times)
  else:
    dataset = preprocess(spec.read(raw_file), threshold=threshold, seed=seed)
    cache.save(dataset, path)
    if not times:
      dataset = _without_times(dataset)
  _log.info("%s: %s", name, dataset.stats)
  return dataset


def _without_times(dataset: ProcessedDataset) -> ProcessedDataset:
  """The dataset with its splits' times left out, as `cache.load` gives it
  without times."""
  return dataclasses.replace(dataset, **{
      name: dataclasses.replace(getattr(dataset, name), times=None)
      for name in ("train", "valid", "test")})


__all__ = [
    "DATASETS", "DownloadError", "EmptyDatasetError", "INPUT_ERRORS", "ProcessedDataset", "RawFormatError",
    "UserSequences", "load_dataset", "preprocess",
]
