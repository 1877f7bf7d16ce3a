"""The preprocessed-dataset cache: one `.npz` (numpy, no pickle) per raw
file identity and protocol parameters, written atomically.

The interactions' times are stored with every dataset and read only when
asked for: an `.npz` reads each array when it is accessed, so a dataset
loaded without times costs nothing for them.
"""

import hashlib
import json
import os
import tempfile

import numpy as np

from remi_tf.data.protocol import ProcessedDataset, UserSequences

# Bump when the protocol's output changes, so stale caches are not reused
# (4: interaction times added).
FORMAT_VERSION = 4
_SPLITS = ("train", "valid", "test")


def cache_key(raw_file: str, **parameters) -> str:
  """A key from the raw file's identity (path, size, mtime) and parameters."""
  status = os.stat(raw_file)
  identity = {
      "file": os.path.abspath(raw_file), "size": status.st_size,
      "mtime_ns": status.st_mtime_ns, "format": FORMAT_VERSION,
      **parameters,
  }
  blob = json.dumps(identity, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:20]


def save(dataset: ProcessedDataset, path: str) -> None:
  """Writes the dataset to `path` atomically (temporary file, then rename)."""
  arrays = {
      "item_vocab": dataset.item_vocab,
      "item_counts": dataset.item_counts,
      "stats": np.array(json.dumps(dataset.stats)),
  }
  for name in _SPLITS:
    split = getattr(dataset, name)
    arrays[f"{name}_offsets"] = split.offsets
    arrays[f"{name}_items"] = split.items
    arrays[f"{name}_users"] = split.users
    if split.times is None:
      raise ValueError(f"the {name} split has no times: save the dataset "
                       "the protocol made")
    arrays[f"{name}_times"] = split.times
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as out:
      np.savez(out, **arrays)
    os.replace(temporary, path)
  except BaseException:
    os.remove(temporary)
    raise


def load(path: str, times: bool = False) -> ProcessedDataset:
  """Reads a dataset written by `save`, with the interactions' times if
  `times` (else the splits' `times` are None and are not read)."""
  with np.load(path, allow_pickle=False) as arrays:
    splits = {
        name: UserSequences(offsets=arrays[f"{name}_offsets"],
                            items=arrays[f"{name}_items"],
                            users=arrays[f"{name}_users"],
                            times=arrays[f"{name}_times"] if times else None)
        for name in _SPLITS
    }
    return ProcessedDataset(item_vocab=arrays["item_vocab"],
                            item_counts=arrays["item_counts"],
                            stats=json.loads(str(arrays["stats"])), **splits)
