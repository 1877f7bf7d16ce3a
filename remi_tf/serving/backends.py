"""User-tower backends of the service: the exported SavedModel in-process,
or TF Serving's REST predict API."""

import abc
from typing import List, Sequence

import numpy as np


class UserTowerError(RuntimeError):
  """The user tower could not answer (e.g. TF Serving unreachable)."""


class UserTowerBackend(abc.ABC):
  """Raw-id histories (already padded to seq_len) -> interests."""

  @abc.abstractmethod
  def interests(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
    """float32 [B, K, d] for histories str [B, seq_len]."""


class InProcessUserTower(UserTowerBackend):
  """Calls `serving_default` of the exported user tower with TensorFlow."""

  def __init__(self, saved_model_dir: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._model = tf.saved_model.load(saved_model_dir)
    self._serve = self._model.signatures["serving_default"]

  def interests(self, histories):
    outputs = self._serve(history=self._tf.constant(histories,
                                                    self._tf.string))
    return outputs["interests"].numpy()


class TFServingUserTower(UserTowerBackend):
  """Calls TF Serving's REST predict API for one model version
  (`POST <model_url>/versions/<version>:predict`), so that the interests
  always come from the tower that pairs with the loaded item index.

  Args:
    model_url: e.g. `http://localhost:8501/v1/models/user_tower`.
    version: the export version to call.
    timeout: seconds per request.
  """

  def __init__(self, model_url: str, version: int, timeout: float = 5.0):
    import httpx  # pylint: disable=g-import-not-at-top
    self.url = f"{model_url.rstrip('/')}/versions/{version}:predict"
    self._client = httpx.Client(timeout=timeout)
    self._errors = (httpx.HTTPError,)

  def interests(self, histories: List[List[str]]):
    payload = {"signature_name": "serving_default",
               "inputs": {"history": [list(h) for h in histories]}}
    try:
      response = self._client.post(self.url, json=payload)
      response.raise_for_status()
      outputs = response.json()["outputs"]
    except self._errors as error:
      raise UserTowerError(f"TF Serving at {self.url}: {error}") from None
    except (KeyError, ValueError) as error:
      raise UserTowerError(f"TF Serving at {self.url} answered without "
                           f"outputs: {error}") from None
    interests = outputs["interests"] if isinstance(outputs, dict) else outputs
    return np.asarray(interests, dtype=np.float32)
