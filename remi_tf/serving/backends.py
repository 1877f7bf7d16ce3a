"""User-tower backends of the service: the exported SavedModel in-process,
or TF Serving's REST predict API, or its gRPC `PredictionService`."""

import abc
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np


# The longest wait of the gRPC backend between attempts to reconnect to TF
# Serving.
MAX_RECONNECT_BACKOFF_MS = 1000


class UserTowerError(RuntimeError):
  """The user tower could not answer (e.g. TF Serving unreachable)."""


class UserTowerBackend(abc.ABC):
  """Raw-id histories (already padded to seq_len), and their times for a
  tower that takes them, -> interests.

  `remote` backends wait on the network: the service calls them off its
  event loop, so that a slow or hung server delays only their requests.
  """

  remote = False

  @abc.abstractmethod
  def interests(self, histories: Sequence[Sequence[str]],
                times: Optional[Sequence[Sequence[int]]] = None
                ) -> np.ndarray:
    """float32 [B, K, d] for histories str [B, seq_len] and, for a tower
    that takes them (never sent to one that does not), their times int64
    [B, seq_len]."""


class InProcessUserTower(UserTowerBackend):
  """Calls `serving_default` of the exported user tower with TensorFlow."""

  def __init__(self, saved_model_dir: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._model = tf.saved_model.load(saved_model_dir)
    self._serve = self._model.signatures["serving_default"]

  def interests(self, histories, times=None):
    inputs = {"history": self._tf.constant(histories, self._tf.string)}
    if times is not None:
      inputs["times"] = self._tf.constant(times, self._tf.int64)
    return self._serve(**inputs)["interests"].numpy()


class TFServingUserTower(UserTowerBackend):
  """Calls TF Serving's REST predict API for one model version
  (`POST <model_url>/versions/<version>:predict`), so that the interests
  always come from the tower that pairs with the loaded item index.

  Args:
    model_url: e.g. `http://localhost:8501/v1/models/user_tower`.
    version: the export version to call.
    timeout: seconds per request.
  """

  remote = True

  def __init__(self, model_url: str, version: int, timeout: float = 5.0):
    import httpx  # pylint: disable=g-import-not-at-top
    self.url = f"{model_url.rstrip('/')}/versions/{version}:predict"
    self._client = httpx.Client(timeout=timeout)
    self._errors = (httpx.HTTPError,)

  def interests(self, histories: List[List[str]], times=None):
    inputs = {"history": [list(h) for h in histories]}
    if times is not None:
      inputs["times"] = [list(t) for t in times]
    payload = {"signature_name": "serving_default", "inputs": inputs}
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


class TFServingGrpcUserTower(UserTowerBackend):
  """Calls TF Serving's gRPC `PredictionService.Predict` (the stubs of
  `tensorflow-serving-api`) for one model version, signature
  `serving_default`, so that the interests always come from the tower that
  pairs with the loaded item index (never the implicit latest).

  Tensors are written and read as protos directly, with numpy:
  `tf.make_tensor_proto` and `tf.make_ndarray` take about 10 and 2-4 times as
  long (docs/serving.md). The answer may hold its values in `float_val` (TF
  Serving's default) or in `tensor_content`.

  Args:
    target: TF Serving's gRPC address, `HOST:PORT` (port 8500 by default).
    version: the export version to call.
    model_name: the model's name in TF Serving (`MODEL_NAME`).
    timeout: seconds per request.
  """

  remote = True

  def __init__(self, target: str, version: int,
               model_name: str = "user_tower", timeout: float = 5.0):
    # pylint: disable=g-import-not-at-top
    import grpc
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    # pylint: enable=g-import-not-at-top
    self.target, self.version, self.model_name = target, version, model_name
    self._name = (f"TF Serving gRPC at {target}, model {model_name} "
                  f"version {version}")
    self._timeout = timeout
    self._rpc_error = grpc.RpcError
    self._float, self._string = types_pb2.DT_FLOAT, types_pb2.DT_STRING
    self._int64 = types_pb2.DT_INT64
    self._dtype_name = types_pb2.DataType.Name
    self._new_request = predict_pb2.PredictRequest
    # gRPC backs off up to 120 s between reconnection attempts, and calls
    # fail at once meanwhile: a TF Serving restart would mean many seconds
    # of 502s after it is back (16.6 s after a 30 s outage, measured).
    self._channel = grpc.insecure_channel(
        target, options=[("grpc.max_reconnect_backoff_ms",
                          MAX_RECONNECT_BACKOFF_MS)])
    self._predict = prediction_service_pb2_grpc.PredictionServiceStub(
        self._channel).Predict

  def interests(self, histories: Sequence[Sequence[str]],
                times: Optional[Sequence[Sequence[int]]] = None
                ) -> np.ndarray:
    request = self._new_request()
    request.model_spec.name = self.model_name
    request.model_spec.version.value = self.version
    request.model_spec.signature_name = "serving_default"
    request.output_filter.append("interests")
    history = _matrix_input(request, "history", self._string, histories)
    history.string_val.extend([raw_id.encode() for row in histories
                               for raw_id in row])
    if times is not None:
      _matrix_input(request, "times", self._int64, times).int64_val.extend(
          [int(time) for row in times for time in row])
    try:
      response = self._predict(request, timeout=self._timeout)
    except self._rpc_error as error:
      raise UserTowerError(f"{self._name}: {error.code().name}: "
                           f"{error.details()}") from None
    return self.read_interests(response, len(histories))

  def read_interests(self, response, rows: int) -> np.ndarray:
    """float32 [rows, K, d] from a `PredictResponse`.

    Raises:
      UserTowerError: the answer is not that tensor, or comes from another
        version.
    """
    answered = response.model_spec.version.value
    if response.model_spec.HasField("version") and answered != self.version:
      raise UserTowerError(f"{self._name} answered for version {answered}")
    if "interests" not in response.outputs:
      raise UserTowerError(f"{self._name} answered without interests "
                           f"(outputs: {sorted(response.outputs)})")
    tensor = response.outputs["interests"]
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    if tensor.dtype != self._float or len(shape) != 3 or shape[0] != rows:
      raise UserTowerError(f"{self._name} answered interests of dtype "
                           f"{self._dtype_name(tensor.dtype)} and shape "
                           f"{shape}, not DT_FLOAT [{rows}, K, d]")
    return _float_values(tensor, shape, self._name)


def _matrix_input(request, name: str, dtype, rows: Sequence[Sequence]):
  """The request's input `name`, typed `dtype` and shaped [len(rows),
  len(rows[0])], its values left to the caller."""
  tensor = request.inputs[name]
  tensor.dtype = dtype
  tensor.tensor_shape.dim.add().size = len(rows)
  tensor.tensor_shape.dim.add().size = len(rows[0])
  return tensor


def _float_values(tensor, shape: Tuple[int, ...], name: str) -> np.ndarray:
  """The values of a float `TensorProto` as an array of `shape`, read as
  TensorFlow reads them: `tensor_content` if set, else `float_val`, whose
  last value repeats to fill the shape. No values at all is an error here
  (TensorFlow would read zeros)."""
  size = math.prod(shape)
  if tensor.tensor_content:
    values = np.frombuffer(tensor.tensor_content, dtype="<f4")
  else:
    values = np.array(tensor.float_val, dtype=np.float32)
    if 0 < len(values) < size:
      values = np.pad(values, (0, size - len(values)), mode="edge")
  if len(values) != size:
    raise UserTowerError(f"{name} answered {len(values)} values for "
                         f"shape {shape}")
  return values.reshape(shape)
