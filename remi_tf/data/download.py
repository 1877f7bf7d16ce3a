"""Downloads of canonical raw files through tensorflow-datasets' download
manager (progress bar, checksums recorded, cached, written atomically)."""

import os
import shutil
import socket
from typing import Optional
from urllib import parse

from remi_tf.data.registry import DatasetSource


class DownloadError(RuntimeError):
  """A raw file could not be fetched; says which URL and what to do."""


def fetch(name: str, spec: DatasetSource, download_dir: str) -> str:
  """Downloads (or finds in `download_dir`) the raw file of a dataset.

  Args:
    name: the dataset name, for messages.
    spec: its source.
    download_dir: where downloads are cached.

  Returns:
    The local path of the raw file.

  Raises:
    DownloadError: offline, or no URL for this dataset. The message names the
      URL and the `--raw-file` flag; nothing half-written is left behind, nor
      any folder this call created (such as a new cache's).
  """
  if spec.url is None:
    raise DownloadError(f"{name}: {spec.manual}, then pass it with "
                        "--raw-file PATH")
  # tfds retries a refused connection ten times with back-off (minutes);
  # offline, say so at once.
  unreachable = _unreachable(spec.url)
  if unreachable:
    raise DownloadError(
        f"{name}: could not download {spec.url} ({unreachable}). Without "
        "internet access, fetch the file elsewhere and pass it with "
        "--raw-file PATH")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  created = _missing_folders(download_dir)
  os.makedirs(download_dir, exist_ok=True)
  before = set(os.listdir(download_dir))
  try:
    manager = tfds.download.DownloadManager(
        download_dir=download_dir, register_checksums=False,
        force_checksums_validation=False)
    if spec.archive_member:
      path = os.path.join(manager.download_and_extract(spec.url),
                          spec.archive_member)
    else:
      path = manager.download(spec.url)
  except BaseException as error:  # tfds wraps network errors in many types
    _remove_new_entries(download_dir, before)
    _remove_empty_folders(created)
    if not isinstance(error, Exception):  # Ctrl-C: cleaned up, re-raised
      raise
    raise DownloadError(
        f"{name}: could not download {spec.url} ({type(error).__name__}: "
        f"{error}). Without internet access, fetch the file elsewhere and "
        "pass it with --raw-file PATH") from None
  return os.fspath(path)


def _unreachable(url: str, timeout: float = 10.0) -> Optional[str]:
  """Why the URL's host cannot be reached, or None if it can."""
  address = parse.urlsplit(url)
  port = address.port or (443 if address.scheme == "https" else 80)
  try:
    socket.create_connection((address.hostname, port), timeout=timeout).close()
  except OSError as error:
    return f"cannot reach {address.hostname}:{port}: {error}"
  return None


def _missing_folders(directory: str) -> list:
  """`directory` and those of its parents that do not exist yet, deepest
  first: what `os.makedirs(directory)` will create."""
  missing = []
  directory = os.path.abspath(directory)
  while not os.path.exists(directory):
    missing.append(directory)
    directory = os.path.dirname(directory)
  return missing


def _remove_new_entries(directory: str, before: set) -> None:
  for entry in set(os.listdir(directory)) - before:
    target = os.path.join(directory, entry)
    if os.path.isdir(target):
      shutil.rmtree(target, ignore_errors=True)
    else:
      os.remove(target)


def _remove_empty_folders(folders: list) -> None:
  """Removes each folder, in order, unless something else now holds it."""
  for folder in folders:
    try:
      os.rmdir(folder)
    except OSError:
      return


def cache_home(override: Optional[str] = None) -> str:
  """Where remi-tf keeps downloads and preprocessed data."""
  return override or os.environ.get(
      "REMI_TF_HOME", os.path.join(os.path.expanduser("~"), ".cache",
                                   "remi-tf"))
