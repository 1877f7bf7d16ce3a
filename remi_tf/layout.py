"""The export layout, defined once: what `saved_models/<name>/` holds, which
user tower pairs with which item index, and the order of publishing that
lets readers never see half an export. No TensorFlow: the exporter writes
with it; the service, export evaluation and recommend read with it.

  saved_models/<name>/
    user_tower/<v>/          SavedModel for TF Serving (its model base path)
    item_index/<v>/          the ScaNN index (`remi_tf.index`) and
                             metadata.json, the metadata of version v
    retrieval/<v>/           end-to-end exact retrieval SavedModel
    metadata.json            a summary naming each complete version's pieces

Version v is one export: `user_tower/<v>` pairs only with `item_index/<v>`.
`publish` moves a staged export into place by renames, the index and the
retrieval model first and the user tower last, so whenever
`user_tower/<v>` exists (which is when TF Serving loads it) its index is
complete. A version is complete when its user tower folder exists and its
metadata is readable; readers take the newest complete version (or a pinned
one) and load both pieces of that version. The folders are the truth; the
top-level summary is rewritten after each publish. One exporter at a time
per folder: a staging folder left by an interrupted export is removed by
the next one.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator, List, Optional

USER_TOWER, ITEM_INDEX, RETRIEVAL = "user_tower", "item_index", "retrieval"
METADATA = "metadata.json"
# Inside item_index/<v>/ (written by `remi_tf.index.ItemIndex.save`).
EMBEDDINGS, RAW_IDS, SCANN, INDEX_CONFIG = ("embeddings.npy", "raw_ids.npy",
                                            "scann", "index.json")
# The queries the recorded recall was measured on and their exact
# neighbours, so that a reader can measure it again.
RECALL_QUERIES, RECALL_NEIGHBOURS = ("recall_queries.npy",
                                     "recall_neighbours.npy")
_PIECES = (ITEM_INDEX, RETRIEVAL, USER_TOWER)  # the order of publishing
_STAGING_PREFIX = ".staging-"


class ModelFolderError(RuntimeError):
  """An export folder is missing, holds no complete version, or a piece of
  it cannot be read."""


def piece_dir(export_dir: str, piece: str, version: int) -> str:
  """`<export_dir>/<piece>/<version>`; piece is USER_TOWER, ITEM_INDEX or
  RETRIEVAL."""
  return os.path.join(export_dir, piece, str(version))


def metadata_path(export_dir: str, version: int) -> str:
  """The metadata file of one version."""
  return os.path.join(piece_dir(export_dir, ITEM_INDEX, version), METADATA)


def numbered_folders(folder: str) -> List[int]:
  """Sorted numeric subfolder names of `folder` ([] if it does not exist)."""
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def read_metadata(export_dir: str, version: int) -> dict:
  """The metadata of one version.

  Raises:
    ModelFolderError: it is missing or not valid JSON.
  """
  path = metadata_path(export_dir, version)
  try:
    with open(path) as stored:
      return json.load(stored)
  except FileNotFoundError:
    raise ModelFolderError(f"{path} is missing") from None
  except ValueError as error:
    raise ModelFolderError(f"{path} is corrupt: {error}") from None


def complete_versions(export_dir: str) -> List[int]:
  """The versions whose user tower and item index are both in place and
  whose metadata is readable, oldest first."""
  _check_layout(export_dir)
  complete = []
  for version in numbered_folders(os.path.join(export_dir, USER_TOWER)):
    try:
      read_metadata(export_dir, version)
    except ModelFolderError:
      continue
    complete.append(version)
  return complete


def latest_version(export_dir: str) -> Optional[int]:
  """The newest complete version, or None."""
  versions = complete_versions(export_dir)
  return versions[-1] if versions else None


def resolve_version(export_dir: str, version: Optional[int] = None) -> int:
  """The version a reader loads: `version` if given, else the newest.

  Raises:
    ModelFolderError: the folder does not exist, holds no complete version
      yet, or not the pinned one.
  """
  if not os.path.isdir(export_dir):
    raise ModelFolderError(f"model folder {export_dir} does not exist")
  versions = complete_versions(export_dir)
  if not versions:
    raise ModelFolderError(f"{export_dir} holds no complete export version "
                           f"(a {USER_TOWER}/<v> with its {ITEM_INDEX}/<v>)")
  if version is None:
    return versions[-1]
  if version not in versions:
    raise ModelFolderError(f"{export_dir} has no complete version {version}; "
                           f"it has {', '.join(map(str, versions))}")
  return version


def find_run_version(export_dir: str, run_id: str) -> Optional[int]:
  """The newest complete version exported from run `run_id` (as recorded by
  the exporter), or None."""
  if not os.path.isdir(export_dir):
    return None
  for version in reversed(complete_versions(export_dir)):
    if read_metadata(export_dir, version).get("run_id") == run_id:
      return version
  return None


def next_version(export_dir: str) -> int:
  """1 + the largest version any piece folder holds (complete or not, so a
  version number is never reused)."""
  return 1 + max((v for piece in _PIECES
                  for v in numbered_folders(os.path.join(export_dir, piece))),
                 default=0)


@contextlib.contextmanager
def staging_dir(export_dir: str) -> Iterator[str]:
  """A hidden staging folder inside `export_dir` (created if missing), on
  the same file system so that publishing is renames; removed on exit.
  Stage the pieces as `<staging>/<piece>/`, then call `publish`.

  Raises:
    ModelFolderError: `export_dir` holds something that is not an export.
  """
  if os.path.isdir(export_dir):
    _check_layout(export_dir)
    names = os.listdir(export_dir)
    unexpected = [name for name in names if name not in (*_PIECES, METADATA)
                  and not name.startswith(_STAGING_PREFIX)]
    if unexpected:
      raise ModelFolderError(f"{export_dir} is not an export folder (it "
                             f"holds {', '.join(sorted(unexpected)[:3])})")
    for name in names:
      if name.startswith(_STAGING_PREFIX):
        _remove(os.path.join(export_dir, name))
  os.makedirs(export_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=export_dir)
  try:
    yield staging
  finally:
    _remove(staging)


def publish(staging: str, export_dir: str, metadata: dict) -> int:
  """Moves a staged export into place as the next version.

  The version's metadata (`metadata` plus "version") is written into the
  staged index; then item index and retrieval model are renamed into place,
  the user tower last; then the summary is rewritten.

  Returns:
    The version published.
  """
  version = next_version(export_dir)
  _write_json(os.path.join(staging, ITEM_INDEX, METADATA),
              {**metadata, "version": version})
  for piece in _PIECES:
    os.makedirs(os.path.join(export_dir, piece), exist_ok=True)
    os.rename(os.path.join(staging, piece),
              piece_dir(export_dir, piece, version))
  write_summary(export_dir)
  return version


def write_summary(export_dir: str) -> dict:
  """Rewrites `<export_dir>/metadata.json` (atomically) from the complete
  versions: {"latest": v, "versions": {"<v>": {piece: path, ...}}}, paths
  relative to the export folder."""
  versions = complete_versions(export_dir)
  summary = {
      "latest": versions[-1] if versions else None,
      "versions": {
          str(v): {**{piece: os.path.join(piece, str(v)) for piece in _PIECES},
                   "metadata": os.path.join(ITEM_INDEX, str(v), METADATA),
                   "run_id": read_metadata(export_dir, v).get("run_id")}
          for v in versions},
  }
  _write_json(os.path.join(export_dir, METADATA), summary)
  return summary


def file_record(path: str) -> dict:
  """How an export names a file it depends on without its machine path:
  {"name": base name, "sha256": content hash, "bytes": size}."""
  return {"name": os.path.basename(path), "sha256": sha256_of_file(path),
          "bytes": os.path.getsize(path)}


def sha256_of_file(path: str, chunk_bytes: int = 1 << 20) -> str:
  """Hex SHA-256 of a file's content, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as stream:
    for chunk in iter(lambda: stream.read(chunk_bytes), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check_layout(export_dir: str) -> None:
  """Raises ModelFolderError on an export of the old unversioned layout."""
  if os.path.exists(os.path.join(export_dir, ITEM_INDEX, INDEX_CONFIG)):
    raise ModelFolderError(
        f"{export_dir} is an export of the old layout (one unversioned "
        f"{ITEM_INDEX}/); export the run again into a new folder")


def _write_json(path: str, payload: dict) -> None:
  """Writes JSON atomically (a temporary file, then a rename); the file
  gets the usual permissions, readable by a serving process."""
  temporary = os.path.join(os.path.dirname(path),
                           f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
  try:
    with open(temporary, "w") as out:
      json.dump(payload, out, indent=2, sort_keys=True)
    os.replace(temporary, path)
  except BaseException:
    _remove(temporary)
    raise


def _remove(path: str) -> None:
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.remove(path)
