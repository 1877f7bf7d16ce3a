"""A stand-in for TF Serving's gRPC API in tests: a local process that
answers `tensorflow.serving.PredictionService/Predict`, built with the
protos and stubs of `tensorflow-serving-api` and grpcio, by running the
SavedModels under the model base path with TensorFlow. It loads every
version `<base>/<v>` present at start and, as TF Serving:
- answers the version in `model_spec.version`, or the newest without one;
  another model name or a version it does not have is NOT_FOUND;
- runs the signature `model_spec.signature_name` (`serving_default` if
  empty), an unknown one is FAILED_PRECONDITION; the request's inputs must
  be the signature's (else INVALID_ARGUMENT);
- returns the outputs named in `output_filter` (all if empty) with their
  values in the typed fields (`float_val`: TF Serving's default
  serialization), and the model spec it ran in `model_spec`.
It is NOT TF Serving, which cannot be installed here; it checks that the
service's gRPC backend speaks that protocol. Other methods are UNIMPLEMENTED.

  python tests/tf_serving_grpc_standin.py MODEL_BASE_PATH PORT [MODEL_NAME]
"""

import concurrent.futures
import os
import sys

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc


def _as_proto_field(value: tf.Tensor, proto) -> None:
  """Writes a float32 tensor as TF Serving's `Tensor::AsProtoField` does."""
  proto.dtype = tf.float32.as_datatype_enum
  proto.tensor_shape.CopyFrom(value.shape.as_proto())
  proto.float_val.extend(value.numpy().ravel().tolist())


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict over {version: loaded SavedModel} of one model name."""

  def __init__(self, name, models):
    self._name, self._models = name, models

  def Predict(self, request, context):  # pylint: disable=invalid-name
    spec = request.model_spec
    if spec.HasField("version"):
      version = spec.version.value
      wanted = f"Specific({spec.name}, {version})"
    else:
      version, wanted = max(self._models), f"Latest({spec.name})"
    if spec.name != self._name or version not in self._models:
      context.abort(grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: {wanted}")
    signature_name = spec.signature_name or "serving_default"
    signature = self._models[version].signatures.get(signature_name)
    if signature is None:
      context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{signature_name}" not found.')
    expected = set(signature.structured_input_signature[1])
    if set(request.inputs) != expected:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                    f"inputs {sorted(request.inputs)} do not match the "
                    f"signature's {sorted(expected)}")
    try:
      outputs = signature(**{key: tf.constant(tf.make_ndarray(tensor))
                             for key, tensor in request.inputs.items()})
    except (tf.errors.OpError, TypeError, ValueError) as error:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    names = list(request.output_filter) or sorted(outputs)
    unknown = set(names) - set(outputs)
    if unknown:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: "
                    f"{sorted(unknown)}")
    response = predict_pb2.PredictResponse()
    response.model_spec.name = self._name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature_name
    for name in names:
      _as_proto_field(outputs[name], response.outputs[name])
    return response


def serve(base_path: str, port: int, name: str = "user_tower") -> grpc.Server:
  """Loads the versions under `base_path`, then answers on 127.0.0.1:`port`
  in background threads; returns the started server."""
  models = {int(v): tf.saved_model.load(os.path.join(base_path, v))
            for v in os.listdir(base_path) if v.isdigit()}
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionService(name, models), server)
  server.add_insecure_port(f"127.0.0.1:{port}")
  server.start()
  return server


def main():
  name = sys.argv[3] if len(sys.argv) > 3 else "user_tower"
  serve(sys.argv[1], int(sys.argv[2]), name).wait_for_termination()


if __name__ == "__main__":
  main()
