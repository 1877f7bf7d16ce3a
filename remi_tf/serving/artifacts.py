"""Loading an export for serving: one version's metadata, vocabulary, item
index and the user tower of the same version. Needs only the export folder
(no training code)."""

import dataclasses
from typing import Optional

from remi_tf import layout
from remi_tf.index import ItemIndex
from remi_tf.layout import ModelFolderError
from remi_tf.serving.backends import (InProcessUserTower,
                                      TFServingGrpcUserTower,
                                      TFServingUserTower, UserTowerBackend)
from remi_tf.vocabulary import ItemVocabulary

# ScaNN's search is deterministic: a loaded index gives its recorded recall
# again, up to float differences between machines.
RECALL_TOLERANCE = 0.005


@dataclasses.dataclass
class ServingArtifacts:
  """Everything the service needs, of one export version, loaded once.

  `time_input`: whether the version's user tower takes the history's times
  (metadata "time_input"; versions exported before times have none).
  """

  version: int
  metadata: dict
  seq_len: int
  vocabulary: ItemVocabulary
  index: ItemIndex
  user_tower: UserTowerBackend
  time_input: bool = False


def load_artifacts(model_dir: str, tf_serving_url: Optional[str] = None,
                   version: Optional[int] = None,
                   tf_serving_grpc: Optional[str] = None) -> ServingArtifacts:
  """Loads one version of an export folder written by `remi_tf.export`.

  Args:
    model_dir: `saved_models/<name>`.
    tf_serving_url: TF Serving's REST model URL
      (`http://HOST:8501/v1/models/user_tower`); requests go to the loaded
      version (`.../versions/<v>`), never to another one.
    version: the version to load; default the newest complete one.
    tf_serving_grpc: TF Serving's gRPC address (`HOST:8500`) instead; it
      is asked for model `user_tower`, the loaded version. With neither
      address the user tower runs in-process from `user_tower/<v>`.

  The index's recall is measured again on the queries it was exported with
  (when the export holds them): below the recorded value, the version is
  refused.

  Raises:
    ModelFolderError: naming what is missing, unreadable or not what was
      exported.
    ValueError: both TF Serving addresses are given.
  """
  if tf_serving_url and tf_serving_grpc:
    raise ValueError("give TF Serving's REST URL or its gRPC address, "
                     "not both")
  version = layout.resolve_version(model_dir, version)
  metadata = layout.read_metadata(model_dir, version)
  try:
    seq_len = int(metadata["seq_len"])
  except (KeyError, TypeError, ValueError) as error:
    raise ModelFolderError(f"{layout.metadata_path(model_dir, version)} is "
                           f"corrupt: no seq_len ({error})") from None
  index_dir = layout.piece_dir(model_dir, layout.ITEM_INDEX, version)
  try:
    index, raw_ids = ItemIndex.load(index_dir)
  except Exception as error:  # numpy, json and scann raise many types
    raise ModelFolderError(f"{index_dir} is corrupt or incomplete: "
                           f"{type(error).__name__}: {error}") from None
  recall = index.measure_recall()
  if recall is not None and recall < index.config.recall - RECALL_TOLERANCE:
    raise ModelFolderError(
        f"{index_dir} finds the exact top-50 with recall {recall:.4f} on the "
        f"queries it was exported with, not the recorded "
        f"{index.config.recall:.4f}: its searcher or embeddings are not the "
        "ones exported")
  if tf_serving_url:
    backend = TFServingUserTower(tf_serving_url, version)
  elif tf_serving_grpc:
    backend = TFServingGrpcUserTower(tf_serving_grpc, version)
  else:
    path = layout.piece_dir(model_dir, layout.USER_TOWER, version)
    try:
      backend = InProcessUserTower(path)
    except Exception as error:  # TensorFlow raises many types on bad files
      raise ModelFolderError(f"{path} is not a loadable SavedModel: "
                             f"{type(error).__name__}: {error}") from None
  return ServingArtifacts(version=version, metadata=metadata,
                          seq_len=seq_len,
                          vocabulary=ItemVocabulary(raw_ids), index=index,
                          user_tower=backend,
                          time_input=bool(metadata.get("time_input", False)))
