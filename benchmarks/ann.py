"""ScaNN item index of an export against exact search: recall@50 and
queries/s.

Queries are interest vectors, one query per interest (the service searches
each interest separately, then merges): by default the exported user tower
(`remi_tf.serving.load_artifacts`, in-process) run on real users' histories
of the dataset the export was trained on (test users first, then
validation and training users if more are needed; the dataset is rebuilt
from the run configuration in metadata.json, through --cache-dir). With
--random-queries (or when the dataset cannot be loaded, which is recorded
in the JSON), Gaussian vectors with the per-dimension spread of the item
embeddings.

Measured:
  recall      recall@50 of `ItemIndex.search` against exact search
              (`remi_tf.index.exact_neighbours` / `neighbour_recall`).
  qps_scann   `index.search(queries, 50)`, --batch queries per call
              (default 1: the single-query latency path), and batched with
              --batched (default 256) queries per call.
  qps_exact   numpy: queries @ embeddings.T, np.argpartition top-50, then
              the 50 sorted, over the whole table, batched the same ways.
  speedup     qps_scann / qps_exact.

The exported index is brute force below 20,000 items (ScaNN's guidance),
so on small catalogs the speedup is ~1x; `index_kind` says which index was
measured. --rebuild-tree builds a tree_ah index (about sqrt(N) leaves,
asymmetric hashing, re-ordering, as the export does for large catalogs) on
the same embeddings and tunes it with `ItemIndex.tune` on queries disjoint
from the measured ones when there are enough (else on the same ones, and
`tuned_on_measured_queries` says so), so the tree can be measured on small
catalogs too.

Targets: recall >= 0.99 at >= 10x the queries/s of exact search (tree_ah
on a large catalog, e.g. Gowalla's 174k items).

  python benchmarks/ann.py --model-dir saved_models/gowalla
  python benchmarks/ann.py --model-dir saved_models/bench --rebuild-tree

(saved_models/bench: the small export made in benchmarks/README.md.)

Prints progress on stderr and one JSON line on stdout.
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (repo root on sys.path; imports remi_tf first)

import numpy as np  # noqa: E402

TARGETS = {"recall": (">=", 0.99), "speedup": (">=", 10.0)}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model-dir", required=True,
                      help="an export, e.g. saved_models/gowalla")
  parser.add_argument("--cache-dir", help="the dataset cache of the export's "
                      "run (default: remi_tf's default)")
  parser.add_argument("--raw-file", help="a local copy of the raw file the "
                      "export was trained on (unless it was downloaded)")
  parser.add_argument("--queries", type=int, default=2000,
                      help="interest vectors to measure")
  parser.add_argument("--random-queries", action="store_true",
                      help="Gaussian queries instead of users' interests")
  parser.add_argument("--batch", type=int, default=1,
                      help="queries per search call (1: latency path)")
  parser.add_argument("--batched", type=int, default=256,
                      help="queries per call of the batched measurement")
  parser.add_argument("--warmup", type=int, default=20,
                      help="untimed calls before each timed loop")
  parser.add_argument("--rebuild-tree", action="store_true",
                      help="measure a tree_ah index built and tuned here")
  parser.add_argument("--num-leaves", type=int,
                      help="tree leaves (default round(sqrt(N)))")
  parser.add_argument("--reorder", type=int, default=250,
                      help="re-ordered candidates of the rebuilt tree")
  parser.add_argument("--tune-queries", type=int, default=2000,
                      help="interest vectors to tune the rebuilt tree on")
  parser.add_argument("--seed", type=int, default=2023)
  args = parser.parse_args(argv)
  _common.require_positive(
      parser, args, ("queries", "batch", "batched", "tune_queries"))
  return args


def user_interests(artifacts, metadata, cache_dir, wanted: int,
                   raw_file=None):
  """float32 [Q, d] interest vectors of up to `wanted` // K + 1 real
  users, and {split: users used}."""
  histories, item_vocab, _ = _common.dataset_histories(
      metadata, cache_dir, expected_vocab=artifacts.vocabulary.raw_ids,
      raw_file=raw_file)
  k = int(metadata["interests"])
  histories = histories[:math.ceil(wanted / k)]
  raw = np.concatenate([[""], item_vocab])
  vectors = [artifacts.user_tower.interests(raw[chunk].tolist())
             for chunk in _common.chunks(histories, 256)]
  vectors = np.concatenate(vectors)
  return np.ascontiguousarray(vectors.reshape(-1, vectors.shape[-1]),
                              np.float32), len(histories)


def gaussian_queries(rng, embeddings: np.ndarray, count: int) -> np.ndarray:
  """float32 [count, d], N(0, per-dimension std of the embeddings)."""
  scale = embeddings.std(axis=0)
  return (rng.standard_normal((count, embeddings.shape[1])) * scale
          ).astype(np.float32)


def exact_numpy(embeddings: np.ndarray, n: int):
  """Exact top-n by numpy: matmul, argpartition, sort of the n; item ids."""
  def search(queries):
    scores = queries @ embeddings.T
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1) + 1
  return search


def tree_index(embeddings: np.ndarray, args, tune_queries: np.ndarray,
               queries: np.ndarray):
  """A tree_ah ItemIndex on the embeddings, tuned to recall 0.99."""
  from remi_tf.index import IndexConfig, ItemIndex  # pylint: disable=g-import-not-at-top
  leaves = args.num_leaves or max(2, int(round(math.sqrt(len(embeddings)))))
  leaves = min(leaves, len(embeddings))
  index_config = IndexConfig(kind="tree_ah", num_leaves=leaves,
                             leaves_to_search=min(leaves,
                                                  max(leaves // 10, 10)),
                             reorder=args.reorder)
  build_seconds, index = _common.timed(
      lambda: ItemIndex.build(embeddings, index_config))
  tune_seconds, _ = _common.timed(lambda: index.tune(tune_queries, queries))
  _common.log(f"tree_ah: built in {build_seconds:.1f}s, tuned in "
              f"{tune_seconds:.1f}s to {index.config}")
  return index, build_seconds, tune_seconds


def throughput(search, queries: np.ndarray, batch: int, warmup: int):
  """queries/s of search() called on batches of `batch` queries, and the
  per-call latency summary."""
  calls = _common.chunks(queries, batch)
  seconds = _common.time_calls(search, calls, warmup=warmup)
  return {"batch": batch, "qps": len(queries) / seconds.sum(),
          "seconds": float(seconds.sum()),
          "latency": _common.latency_summary(seconds)}


def main(argv=None) -> int:
  args = parse_args(argv)
  from remi_tf.index import RECALL_AT, exact_neighbours, neighbour_recall  # pylint: disable=g-import-not-at-top
  from remi_tf.serving import load_artifacts  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(args.seed)
  artifacts = load_artifacts(args.model_dir)
  metadata = artifacts.metadata
  embeddings = artifacts.index.embeddings
  n = RECALL_AT
  _common.log(f"{args.model_dir}: {len(embeddings)} items, "
              f"d={embeddings.shape[1]}, exported index "
              f"{artifacts.index.config}")

  wanted = args.queries + (args.tune_queries if args.rebuild_tree else 0)
  source, users = "random", 0
  fallback_reason = None
  if not args.random_queries:
    try:
      vectors, users = user_interests(artifacts, metadata, args.cache_dir,
                                      wanted, args.raw_file)
      source = "users"
    except Exception as error:  # pylint: disable=broad-except
      fallback_reason = f"{type(error).__name__}: {error}"
      _common.log(f"WARNING: cannot load the dataset ({fallback_reason}); "
                  "falling back to random queries")
  if source == "random":
    vectors = gaussian_queries(rng, embeddings, wanted)
  queries = vectors[:args.queries]
  tune_queries = vectors[args.queries:args.queries + args.tune_queries]
  tuned_on_measured = args.rebuild_tree and len(tune_queries) == 0
  if tuned_on_measured:
    tune_queries = queries
  _common.log(f"{len(queries)} queries: "
              + (f"interests of {users} users" if users else "random")
              + (f", {len(tune_queries)} for tuning" if args.rebuild_tree
                 else ""))

  build_seconds = tune_seconds = None
  if args.rebuild_tree:
    index, build_seconds, tune_seconds = tree_index(embeddings, args,
                                                    tune_queries, queries)
  else:
    index = artifacts.index

  exact = exact_neighbours(queries, embeddings, n)
  found = np.concatenate([index.search(chunk, n)[0]
                          for chunk in _common.chunks(queries, 256)])
  recall = neighbour_recall(found, exact)
  exact_search = exact_numpy(embeddings, n)
  numpy_agreement = neighbour_recall(exact_search(queries), exact)
  _common.log(f"recall@{n} = {recall:.4f} (numpy exact vs "
              f"exact_neighbours: {numpy_agreement:.4f})")

  measured = {}
  for batch in dict.fromkeys((args.batch, args.batched)):
    scann = throughput(lambda q: index.search(q, n), queries, batch,
                       args.warmup)
    exact_rate = throughput(exact_search, queries, batch, args.warmup)
    measured[batch] = {"scann": scann, "exact": exact_rate,
                       "speedup": scann["qps"] / exact_rate["qps"]}
    _common.log(f"batch {batch}: scann {scann['qps']:,.0f} q/s, exact "
                f"{exact_rate['qps']:,.0f} q/s, speedup "
                f"{measured[batch]['speedup']:.2f}x")

  main_figures = measured[args.batch]
  figures = {"recall": recall, "speedup": main_figures["speedup"]}
  _common.emit("ann", args, {
      "recall": recall,
      "qps_scann": main_figures["scann"]["qps"],
      "qps_exact": main_figures["exact"]["qps"],
      "speedup": main_figures["speedup"],
      "batch": args.batch,
      "batched": {"batch": args.batched,
                  "qps_scann": measured[args.batched]["scann"]["qps"],
                  "qps_exact": measured[args.batched]["exact"]["qps"],
                  "speedup": measured[args.batched]["speedup"]},
      "details": {str(b): m for b, m in measured.items()},
      "index_kind": index.config.kind,
      "index_config": dict(vars(index.config)),
      "exported_index_config": dict(vars(artifacts.index.config)),
      "rebuilt_tree": args.rebuild_tree,
      "tree_build_seconds": build_seconds,
      "tree_tune_seconds": tune_seconds,
      "tuned_on_measured_queries": tuned_on_measured,
      "num_items": len(embeddings),
      "embedding_dim": int(embeddings.shape[1]),
      "num_queries": len(queries),
      "num_tune_queries": len(tune_queries) if args.rebuild_tree else 0,
      "query_source": source,
      "query_users": users,
      "random_fallback_reason": fallback_reason,
      "numpy_exact_recall_vs_exact_neighbours": numpy_agreement,
      "targets": _common.describe_targets(TARGETS),
      "meets_targets": _common.check_targets(figures, TARGETS),
  })
  return 0


if __name__ == "__main__":
  sys.exit(main())
