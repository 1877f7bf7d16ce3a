"""Choose beta (IHN) and lambda (routing regularization) for a dataset by
short runs chosen on validation Recall@50 (test users are never read).

  python pipelines/tune.py --dataset csv --raw-file my_log.csv.gz \
      --budget-steps 2000 --eval-users 2000
  python pipelines/train.py --config tuning/csv/train_config.json

Beta over 0.1, 1, 4, 10 at lambda 100 (the paper's), then lambda over 10,
100, 1000 at the best beta; the median stopping rule ends hopeless trials
early (remi_tf/tuning.py). Prints the table and writes tuning.md,
tuning.json and train_config.json (the chosen settings, for train.py
--config) to --output. The same command resumes a killed search.
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import config, threads, tuning  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import INPUT_ERRORS  # noqa: E402  pylint: disable=wrong-import-position


def _grid(text: str) -> tuple:
  try:
    return tuple(float(value) for value in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  cli.add_dataset_flags(parser, required=False)
  cli.add_config_flag(parser, "JSON object of train.py settings the trials "
                      "share (as train.py --config;\nwithout beta, rr_lambda,"
                      " max_steps, eval_every, patience); flags override it")
  parser.add_argument("--model", choices=config.REMI_MODELS,
                      help="user tower (default comirec-sa)")
  parser.add_argument("--eval-users", type=int, help="validate on this many "
                      "validation users (default: all)")
  parser.add_argument("--seed", type=int, help="default 2023")
  search = tuning.Search()
  parser.add_argument("--budget-steps", type=int, default=search.budget_steps,
                      help="training steps of a trial (default %(default)s)")
  parser.add_argument("--checkpoints", type=int, default=search.checkpoints,
                      help="validations per trial (default %(default)s)")
  parser.add_argument("--betas", type=_grid, default=search.betas,
                      help="beta grid (default 0.1,1,4,10)")
  parser.add_argument("--lambdas", type=_grid, default=search.lambdas,
                      help="lambda grid (default 10,100,1000)")
  parser.add_argument("--min-trials", type=int,
                      default=search.rule.min_trials,
                      help="finished trials the stopping rule needs "
                      "(default %(default)s)")
  parser.add_argument("--grace", type=int, default=search.rule.grace,
                      help="validations before the stopping rule applies "
                      "(default %(default)s)")
  parser.add_argument("--output", help="default tuning/<dataset>")
  cli.add_cache_flag(parser)
  cli.add_thread_flags(parser)
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  logging.getLogger("remi_tf").setLevel(logging.INFO)
  args = parse_args(argv)
  threads.configure(args.inter_op_threads, args.intra_op_threads)
  try:
    settings = cli.run_settings(args)
    search = tuning.Search(
        budget_steps=args.budget_steps, checkpoints=args.checkpoints,
        betas=args.betas, lambdas=args.lambdas,
        rule=tuning.MedianStoppingRule(min_trials=args.min_trials,
                                       grace=args.grace))
    result = tuning.tune(settings, search, args.output or os.path.join(
        "tuning", settings["dataset"]), args.cache_dir)
  except INPUT_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(result["table"])
  print(f"\nTrain with the chosen settings:\n  python pipelines/train.py "
        f"--config {result['config']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
