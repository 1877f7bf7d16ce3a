"""Answer one recommendation query from an export, on the command line,
as the service does (unknown ids are ignored and counted).

  python pipelines/recommend.py --model-dir saved_models/gowalla \
      --history 2049,1170,88 --k 20

--times gives the history items' times (unix seconds, one per item, in the
same order), for a model that reads them (pimirec); other models ignore
them, and without them a time-reading model has no time information.
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


def _times(text: str, history: list) -> list:
  """--times as integers, one per history item.

  Raises:
    RequestError: a value that is not a non-negative integer, or a count
      other than the history's.
  """
  values = [value.strip() for value in text.split(",") if value.strip()]
  if not all(value.isdigit() for value in values):
    raise serving.RequestError(f"--times must be unix seconds (non-negative "
                               f"integers), got {text!r}")
  if len(values) != len(history):
    raise serving.RequestError(f"--times has {len(values)} values for "
                               f"{len(history)} history items")
  return [int(value) for value in values]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model-dir", required=True)
  parser.add_argument("--history", required=True,
                      help="comma-separated raw item ids, oldest first")
  parser.add_argument("--times", help="comma-separated unix seconds, the "
                      "history items' times (optional)")
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
    times = None if args.times is None else [_times(args.times, history)]
    answer = recommender.recommend([history], args.k,
                                   not args.keep_history, times)[0]
  except (serving.ModelFolderError, serving.RequestError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(dataclasses.asdict(answer)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
