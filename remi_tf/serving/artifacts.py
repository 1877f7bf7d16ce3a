"""Loading an export for serving: metadata, vocabulary, item index and a
user-tower backend. Needs only the export folder (no training code)."""

import dataclasses
import json
import os
from typing import Optional

from remi_tf.index import ItemIndex
from remi_tf.serving.backends import (InProcessUserTower, TFServingUserTower,
                                      UserTowerBackend)
from remi_tf.vocabulary import ItemVocabulary

USER_TOWER, ITEM_INDEX, METADATA = "user_tower", "item_index", "metadata.json"


class ModelFolderError(RuntimeError):
  """An export folder is missing a piece or cannot be read."""


@dataclasses.dataclass
class ServingArtifacts:
  """Everything the service needs, loaded once at start-up."""

  metadata: dict
  vocabulary: ItemVocabulary
  index: ItemIndex
  user_tower: UserTowerBackend

  @property
  def seq_len(self) -> int:
    return int(self.metadata["seq_len"])


def load_artifacts(model_dir: str,
                   tf_serving_url: Optional[str] = None) -> ServingArtifacts:
  """Loads an export folder written by `remi_tf.export`.

  Args:
    model_dir: `saved_models/<name>`.
    tf_serving_url: TF Serving's REST model URL
      (`http://HOST:8501/v1/models/user_tower`); None runs the user tower
      in-process from the newest `user_tower/<version>`.

  Raises:
    ModelFolderError: naming what is missing or unreadable.
  """
  if not os.path.isdir(model_dir):
    raise ModelFolderError(f"model folder {model_dir} does not exist")
  metadata_path = os.path.join(model_dir, METADATA)
  try:
    with open(metadata_path) as stored:
      metadata = json.load(stored)
    seq_len = int(metadata["seq_len"])
  except FileNotFoundError:
    raise ModelFolderError(f"{metadata_path} is missing") from None
  except (ValueError, KeyError) as error:
    raise ModelFolderError(f"{metadata_path} is corrupt: {error}") from None
  index_dir = os.path.join(model_dir, ITEM_INDEX)
  if not os.path.isdir(index_dir):
    raise ModelFolderError(f"{index_dir} is missing")
  try:
    index, raw_ids = ItemIndex.load(index_dir)
  except Exception as error:  # numpy, json and scann raise many types
    raise ModelFolderError(f"{index_dir} is corrupt or incomplete: "
                           f"{type(error).__name__}: {error}") from None
  if tf_serving_url:
    backend = TFServingUserTower(tf_serving_url, seq_len)
  else:
    tower_dir = os.path.join(model_dir, USER_TOWER)
    versions = sorted(int(v) for v in os.listdir(tower_dir)
                      if v.isdigit()) if os.path.isdir(tower_dir) else []
    if not versions:
      raise ModelFolderError(f"{tower_dir} holds no numbered SavedModel "
                             "version")
    path = os.path.join(tower_dir, str(versions[-1]))
    try:
      backend = InProcessUserTower(path)
    except Exception as error:  # TensorFlow raises many types on bad files
      raise ModelFolderError(f"{path} is not a loadable SavedModel: "
                             f"{type(error).__name__}: {error}") from None
  return ServingArtifacts(metadata=metadata,
                          vocabulary=ItemVocabulary(raw_ids), index=index,
                          user_tower=backend)
