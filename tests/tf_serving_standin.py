"""A stand-in for TF Serving in tests: a local HTTP process that speaks TF
Serving's REST predict protocol (`POST /v1/models/<name>[/versions/<v>]:
predict` with `{"inputs": {...}}` or `{"instances": [...]}`) by loading the
SavedModel with TensorFlow. Like TF Serving's default version policy it
serves the newest numeric version under the model base path only; other
versions are not found (404). It is NOT TF Serving, which cannot be
installed here; it checks that the service's TF Serving backend speaks that
protocol.

  python tests/tf_serving_standin.py MODEL_BASE_PATH PORT [MODEL_NAME]
"""

import http.server
import json
import os
import sys

import tensorflow as tf


def main():
  base_path, port = sys.argv[1], int(sys.argv[2])
  name = sys.argv[3] if len(sys.argv) > 3 else "user_tower"
  version = max(int(v) for v in os.listdir(base_path) if v.isdigit())
  serve = tf.saved_model.load(os.path.join(base_path, str(version))
                              ).signatures["serving_default"]
  paths = (f"/v1/models/{name}:predict",
           f"/v1/models/{name}/versions/{version}:predict")

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_POST(self):  # pylint: disable=invalid-name
      if self.path not in paths:
        return self._answer(404, {"error": f"Servable not found for request: "
                                           f"{self.path}"})
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      if "inputs" in body:
        history = body["inputs"]["history"]
      else:
        history = [instance["history"] for instance in body["instances"]]
      outputs = serve(history=tf.constant(history, tf.string))
      columns = {key: value.numpy().tolist() for key, value in outputs.items()}
      if "inputs" in body:
        return self._answer(200, {"outputs": columns})
      rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
      return self._answer(200, {"predictions": rows})

    def _answer(self, status, payload):
      data = json.dumps(payload).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, *args):
      pass

  http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
  main()
