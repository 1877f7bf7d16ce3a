"""Serve recommendations over HTTP from an export.

  python pipelines/serve.py --model-dir saved_models/gowalla
  python pipelines/serve.py --model-dir saved_models/gowalla \
      --tf-serving-url http://localhost:8501/v1/models/user_tower
  python pipelines/serve.py --model-dir saved_models/gowalla \
      --tf-serving-grpc localhost:8500

New export versions in --model-dir are served as they appear. SIGTERM
drains: requests in flight finish, new ones get 503, then the service
exits.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import serving  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.serving import shutdown  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model-dir", required=True)
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--tf-serving-url", help="call TF Serving's REST API "
                      "for the user tower instead of running it in-process")
  parser.add_argument("--tf-serving-grpc", metavar="HOST:PORT",
                      help="call TF Serving's gRPC API (model user_tower) "
                      "instead")
  parser.add_argument("--max-k", type=int, default=500,
                      help="largest k a request may ask for")
  parser.add_argument("--model-version", "--version", type=int,
                      dest="version", help="serve this export version only "
                      "(default: the newest, and\nnewer ones as they are "
                      "exported)")
  parser.add_argument("--poll-seconds", type=float,
                      default=serving.DEFAULT_POLL_SECONDS,
                      help="how often to look for a new version in "
                      "--model-dir (default %(default)g; 0: never)")
  parser.add_argument("--max-batch", type=int,
                      default=serving.DEFAULT_MAX_BATCH,
                      help="most concurrent single requests answered in one "
                      "pass (default %(default)d;\n1: no batching)")
  parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                      help="how long a batch waits for more requests after "
                      "its first (default 0:\nonly the requests already "
                      "waiting)")
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  if args.tf_serving_url and args.tf_serving_grpc:
    print("error: give --tf-serving-url or --tf-serving-grpc, not both",
          file=sys.stderr)
    return 2
  if args.poll_seconds < 0 or args.max_batch < 1 or args.batch_wait_ms < 0:
    parser.error("--poll-seconds and --batch-wait-ms must be >= 0 and "
                 "--max-batch >= 1")

  def load(version):
    return serving.Recommender(serving.load_artifacts(
        args.model_dir, args.tf_serving_url, version,
        tf_serving_grpc=args.tf_serving_grpc), args.max_k)

  try:
    model = serving.ServedModel(args.model_dir, load, args.version)
  except serving.ModelFolderError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  drain = shutdown.Drain()
  app = serving.create_app(model, args.poll_seconds or None, args.max_batch,
                           args.batch_wait_ms, drain)
  shutdown.run(app, drain, args.host, args.port)
  return 0


if __name__ == "__main__":
  sys.exit(main())
