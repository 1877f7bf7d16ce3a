"""Answer one recommendation query from an export, on the command line,
as the service does (unknown ids are ignored and counted).

  python pipelines/recommend.py --model-dir saved_models/gowalla \
      --history 2049,1170,88 --k 20
"""

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import serving  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model-dir", required=True)
  parser.add_argument("--history", required=True,
                      help="comma-separated raw item ids, oldest first")
  parser.add_argument("--k", type=int, default=20)
  parser.add_argument("--keep-history", action="store_true",
                      help="allow items of the history in the answer")
  parser.add_argument("--version", type=int,
                      help="the export version (default the newest)")
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  try:
    recommender = serving.Recommender(serving.load_artifacts(
        args.model_dir, version=args.version))
    history = [raw for raw in args.history.split(",") if raw]
    answer = recommender.recommend([history], args.k,
                                   not args.keep_history)[0]
  except (serving.ModelFolderError, serving.RequestError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(dataclasses.asdict(answer)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
