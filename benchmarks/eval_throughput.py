"""Throughput (test users/s) of the paper's exact evaluation: every interest
scored against the whole catalog, each interest's top-50 merged by max
score (remi_tf.evaluation.recommend, as evaluate() runs it), then the
metrics (remi_tf.evaluation.ranking_metrics) timed separately.

The tower is an untrained one (`build_user_tower`, --model, default
comirec-sa) at the given shapes: the cost does not depend on the weights.
Histories are uniform random item ids, each ending with 0 to --max-padding
padding positions; targets are random ids, each user with U{1..--held-out}
of them (held sparsely, as evaluation_examples holds them).

--items is the number of embedding rows: the default 174606 is Gowalla's
174,605 items plus the padding row (num_items = items - 1).

Timing: `recommend` on the first batch (warm-up: kernels, thread pools,
memory), then `recommend` on all --users, timed. Note that `recommend`
wraps its step in a new tf.function on every call, so the timed call
includes one trace of the tower, as every validation during training does.
Reported: users_per_second of recommend, metrics_seconds of
ranking_metrics on the ranked lists, and evaluate_users_per_second of the
two together (what `evaluate` costs).

Target (2 cores): >= 300 users/s for recommend.

  python benchmarks/eval_throughput.py                       # full size
  python benchmarks/eval_throughput.py --items 5000 --users 256

Prints progress on stderr and one JSON line on stdout.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (repo root on sys.path; imports remi_tf first)

TARGETS = {"users_per_second": (">=", 300.0)}


def parse_args(argv=None):
  from remi_tf import config  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--items", type=int, default=174606,
                      help="embedding rows incl. padding (num_items + 1)")
  parser.add_argument("--users", type=int, default=4096)
  parser.add_argument("--seq-len", type=int, default=40)
  parser.add_argument("--interests", type=int, default=4, help="K")
  parser.add_argument("--embedding-dim", type=int, default=64, help="d")
  parser.add_argument("--model", default="comirec-sa",
                      choices=[m for m in config.MODELS if m != "pop"])
  parser.add_argument("--batch-size", type=int,
                      help="users per recommend batch (default: the "
                      "evaluation's own, from its memory budget)")
  parser.add_argument("--max-padding", type=int, default=5)
  parser.add_argument("--held-out", type=int, default=50,
                      help="most held-out targets of a user (metrics)")
  parser.add_argument("--seed", type=int, default=2023)
  args = parser.parse_args(argv)
  if args.items < 2:
    parser.error("--items must be >= 2 (padding + one item)")
  _common.require_positive(
      parser, args, ("users", "seq_len", "held_out"))
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from remi_tf import config, evaluation  # pylint: disable=g-import-not-at-top
  from remi_tf.models import build_user_tower  # pylint: disable=g-import-not-at-top

  tf.keras.utils.set_random_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  num_items = args.items - 1
  n = max(evaluation.CUTOFFS)
  model_config = config.ModelConfig(model=args.model,
                                    interests=args.interests,
                                    embedding_dim=args.embedding_dim,
                                    seq_len=args.seq_len)
  _common.log(f"building an untrained {args.model} (N={num_items}, "
              f"d={args.embedding_dim}, K={args.interests}, "
              f"n={args.seq_len})")
  tower = build_user_tower(model_config, num_items)
  histories = _common.random_histories(rng, args.users, args.seq_len,
                                       num_items, args.max_padding)
  counts = rng.integers(1, args.held_out + 1, size=args.users)
  target_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  target_items = rng.integers(1, num_items + 1,
                              size=target_offsets[-1]).astype(np.int32)

  warmup_seconds, _ = _common.timed(lambda: evaluation.recommend(
      tower, histories[:args.batch_size or 256], n, args.batch_size))
  _common.log(f"warm-up: {warmup_seconds:.2f}s")
  seconds, ranked = _common.timed(lambda: evaluation.recommend(
      tower, histories, n, args.batch_size))
  users_per_second = args.users / seconds
  _common.log(f"recommend: {args.users} users in {seconds:.2f}s = "
              f"{users_per_second:,.0f} users/s")
  if ranked.shape != (args.users, n) or (ranked[:, 0] == 0).any():
    raise RuntimeError(f"recommend returned {ranked.shape} lists with "
                       "empty slots at rank 1")
  metrics_seconds, metrics = _common.timed(
      lambda: evaluation.ranking_metrics(ranked, target_offsets,
                                         target_items))
  _common.log(f"ranking_metrics: {metrics_seconds:.2f}s")
  evaluate_rate = args.users / (seconds + metrics_seconds)

  figures = {"users_per_second": users_per_second}
  _common.emit("eval_throughput", args, {
      "users_per_second": users_per_second,
      "recommend_seconds": seconds,
      "warmup_seconds": warmup_seconds,
      "metrics_seconds": metrics_seconds,
      "metrics_users_per_second": args.users / metrics_seconds,
      "evaluate_users_per_second": evaluate_rate,
      "num_items": num_items,
      "top_n": n,
      "random_metrics": metrics,
      "targets": _common.describe_targets(TARGETS),
      "meets_targets": _common.check_targets(figures, TARGETS),
  })
  return 0


if __name__ == "__main__":
  sys.exit(main())
