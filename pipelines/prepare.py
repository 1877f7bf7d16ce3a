"""Preprocess a dataset through the ComiRec protocol and cache it, without
training: prints its statistics, the time and the peak memory.

  python pipelines/prepare.py --dataset gowalla
  python pipelines/prepare.py --dataset taobao --raw-file UserBehavior.csv

The cache is the one `train.py` reads (same key: raw file, dataset,
threshold, split seed), so a training run afterwards starts at once. A
cached dataset is only loaded, not parsed again.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import config  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import INPUT_ERRORS, load_dataset  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  cli.add_dataset_flags(parser)
  parser.add_argument("--threshold", type=int, help="item/user filter "
                      "threshold (default: the dataset's)")
  cli.add_cache_flag(parser)
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  try:
    if args.threshold is not None:
      config.check_range("threshold", args.threshold)
    dataset = load_dataset(args.dataset, raw_file=args.raw_file,
                           threshold=args.threshold, cache_dir=args.cache_dir)
  except INPUT_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps({
      "dataset": args.dataset, **dataset.stats,
      "seconds": round(time.perf_counter() - start, 2),
      "peak_rss_mb": round(cli.memory_mb(), 1),
  }))
  return 0


if __name__ == "__main__":
  sys.exit(main())
