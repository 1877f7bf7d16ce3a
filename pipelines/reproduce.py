"""Reproduce the paper's comparisons on a dataset with one budget and seed:
the ablation (ComiRec-SA, +IHN, +RR, REMI), the baselines (Pop, YouTube DNN,
GRU4Rec, MIND, ComiRec-DR), REMI on each multi-interest tower (original,
+REMI, gain) and the beta sweep; writes report.md and figures. A rerun
skips the rows already trained in --output.

  python pipelines/reproduce.py --dataset csv \
      --raw-file ../shared/data/amazon-books-38k/interactions.csv.gz \
      --max-steps 5000 --output reports/books

--study ihn trains the IHN study instead: ComiRec-SA with IHN alone over
the paper's beta grid, with fewer and with log-uniform negatives (see
docs/RESULTS.md). --only NAME ... trains some rows only (ComiRec-SA among
them), e.g. a longer budget for two of them:

  python pipelines/reproduce.py --dataset csv --raw-file ... --study ihn \
      --max-steps 20000 --only ComiRec-SA "+IHN beta=1" --output reports/ihn-20k
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import config, report, threads  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import INPUT_ERRORS  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  cli.add_dataset_flags(parser)
  parser.add_argument("--max-steps", type=int, required=True)
  parser.add_argument("--eval-every", type=int,
                      help="default: max-steps / 10, at most 1000")
  parser.add_argument("--patience", type=int, default=50)
  parser.add_argument("--seed", type=int, default=config.TrainConfig.seed)
  parser.add_argument("--study", choices=sorted(report.STUDIES),
                      default="paper", help="which rows (default paper)")
  parser.add_argument("--only", nargs="+", metavar="NAME",
                      help="train only these rows (names as in the report)")
  parser.add_argument("--output", help="default reports/<dataset>, or "
                      "reports/<dataset>-<study> for another study")
  cli.add_cache_flag(parser)
  cli.add_thread_flags(parser)
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("remi_tf").setLevel(logging.INFO)
  threads.configure(args.inter_op_threads, args.intra_op_threads)
  eval_every = args.eval_every or max(1, min(1000, args.max_steps // 10))
  budget = {"max_steps": args.max_steps, "eval_every": eval_every,
            "patience": args.patience, "seed": args.seed}
  default_output = args.dataset if args.study == "paper" else (
      f"{args.dataset}-{args.study}")
  try:
    report.study_rows(args.dataset, args.study, args.only)  # before training
  except ValueError as error:
    parser.error(str(error))
  try:
    path = report.write_report(
        args.dataset, args.raw_file,
        args.output or os.path.join("reports", default_output), budget,
        args.cache_dir, args.study, args.only)
  except INPUT_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  with open(path) as written:
    print(written.read())
  return 0


if __name__ == "__main__":
  sys.exit(main())
