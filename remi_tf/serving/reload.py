"""New export versions without restarts: the served model is replaced when
a complete newer version appears in the export folder, as TF Serving's
file-system source polls its base path."""

import logging
import threading
import time
from typing import Callable, Dict, Optional

from remi_tf import layout
from remi_tf.serving.recommender import Recommender

_log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 30.0


class ServedModel:
  """The `Recommender` being served, swapped for newer export versions.

  A request reads `current` once and answers with that object, so requests
  in flight finish on the version they started on and no answer mixes two
  versions: a new version is loaded completely (user tower and item index,
  beside the old one) before the reference is replaced in one assignment.
  A version that cannot be loaded is refused, with its reason logged and
  kept in `refused`, and the served version stays.

  Args:
    model_dir: the export folder.
    load: loads one version (int) of `model_dir` as a `Recommender`;
      raises on a broken version.
    version: pin this version (never reload); None serves the newest.

  Attributes:
    current: the `Recommender` being served.
    reloads: new versions swapped in since the start.
    refused: {version: why it was refused}.
    load_seconds: how long the served version took to load.
  """

  def __init__(self, model_dir: str, load: Callable[[int], Recommender],
               version: Optional[int] = None):
    self.model_dir = model_dir
    self.pinned = version is not None
    self._load = load
    self.load_seconds = 0.0
    self.current: Recommender = self._timed_load(
        layout.resolve_version(model_dir, version))
    self.reloads = 0
    self.refused: Dict[int, str] = {}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  @property
  def version(self) -> int:
    """The version being served."""
    return self.current.artifacts.version

  def check(self) -> Optional[int]:
    """Serves the newest complete version if it is newer than the served
    one and was not refused before; returns it, or None if nothing
    changed. A pinned model never changes."""
    if self.pinned:
      return None
    try:
      newest = layout.latest_version(self.model_dir)
    except layout.ModelFolderError as error:
      _log.warning("cannot read %s: %s", self.model_dir, error)
      return None
    if newest is None or newest <= self.version or newest in self.refused:
      return None
    try:
      loaded = self._timed_load(newest)
    except Exception as error:  # pylint: disable=broad-except
      # Whatever a broken version raises, the served one must stay.
      self.refused[newest] = f"{type(error).__name__}: {error}"
      _log.error("refused version %d, still serving %d: %s", newest,
                 self.version, self.refused[newest])
      return None
    previous, self.current = self.version, loaded
    self.reloads += 1
    _log.warning("now serving version %d (was %d), loaded in %.1f s",
                 newest, previous, self.load_seconds)
    return newest

  def _timed_load(self, version: int) -> Recommender:
    """Loads `version`; on success, its load time is `load_seconds`."""
    start = time.perf_counter()
    loaded = self._load(version)
    self.load_seconds = time.perf_counter() - start
    return loaded

  def start(self, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
    """Checks for new versions every `poll_seconds` in a daemon thread."""
    if self.pinned or self._thread is not None:
      return
    self._stop.clear()
    self._thread = threading.Thread(target=self._poll, args=(poll_seconds,),
                                    name="version-poll", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    """Stops the polling thread (waits for a load in progress)."""
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None

  def _poll(self, poll_seconds: float) -> None:
    while not self._stop.wait(poll_seconds):
      self.check()
