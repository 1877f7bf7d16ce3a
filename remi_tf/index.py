"""The item index: ScaNN over the item embeddings, configured from the
catalog size, checked against exact search, saved in ScaNN's own format.

Layout of an `item_index/<version>/` folder (names in `remi_tf.layout`):
  embeddings.npy   float32 [N, d], row r is item id r + 1
  raw_ids.npy      str [N], the raw id of each row
  scann/           the serialized searcher (`scann_ops_pybind.load_searcher`)
  index.json       configuration, search parameters and measured recall
  recall_queries.npy     float32 [H, d], the queries that recall was
                         measured on (test users' interests)
  recall_neighbours.npy  int32 [H, 50], their exact top-50 item ids
"""

import dataclasses
import json
import math
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from remi_tf import layout
from remi_tf.retrieval import merge_over_interests_numpy

# ScaNN's guidance: below ~20k points brute force is as fast as anything.
BRUTE_FORCE_BELOW = 20_000
TARGET_RECALL = 0.99
RECALL_AT = 50
# Candidates (users x interests x candidates per interest) searched and
# merged at once: 2**16 keeps a request's working memory to a few MB, which
# the allocator tends to keep; ordinary batches still fit in one group.
MERGE_BUDGET = 2**16
# Exact scores (float32) computed at once when measuring recall: 2**25 is
# 128 MB, whatever the number of queries (4,000 queries x 1.7M items would
# otherwise be 27 GB).
EXACT_SCORE_BUDGET = 2**25


@dataclasses.dataclass
class IndexConfig:
  """How the searcher was built and how it is searched.

  Attributes:
    kind: "brute_force" or "tree_ah".
    num_leaves: partitions (tree_ah).
    leaves_to_search: partitions searched per query.
    reorder: candidates re-scored exactly after asymmetric hashing.
    recall: measured recall@50 against exact search (None: not measured).
  """

  kind: str
  num_leaves: int = 0
  leaves_to_search: int = 0
  reorder: int = 0
  recall: Optional[float] = None


def default_config(num_items: int) -> IndexConfig:
  """ScaNN's recommended starting point for a catalog of `num_items`."""
  if num_items < BRUTE_FORCE_BELOW:
    return IndexConfig(kind="brute_force")
  leaves = int(round(math.sqrt(num_items)))
  return IndexConfig(kind="tree_ah", num_leaves=leaves,
                     leaves_to_search=max(leaves // 10, 10), reorder=250)


def build_searcher(embeddings: np.ndarray, index_config: IndexConfig):
  """A ScaNN searcher (dot product) over float32 [N, d] embeddings."""
  from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top
  builder = scann_ops_pybind.builder(embeddings, RECALL_AT, "dot_product")
  if index_config.kind == "brute_force":
    return builder.score_brute_force().build()
  return (builder.tree(num_leaves=index_config.num_leaves,
                       num_leaves_to_search=index_config.leaves_to_search,
                       training_sample_size=min(len(embeddings), 250_000))
          .score_ah(2, anisotropic_quantization_threshold=0.2)
          .reorder(index_config.reorder).build())


class ItemIndex:
  """Per-interest approximate top-n with ScaNN, merged over interests.

  Args:
    embeddings: float32 [N, d]; row r is item id r + 1.
    searcher: a ScaNN searcher over them.
    index_config: its configuration and search parameters.
    recall_check: (queries float32 [H, d], their exact top-50 item ids
      int32 [H, 50]) that `config.recall` was measured on, or None.
  """

  def __init__(self, embeddings: np.ndarray, searcher,
               index_config: IndexConfig,
               recall_check: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    self.embeddings = embeddings
    self.searcher = searcher
    self.config = index_config
    self.recall_check = recall_check

  @classmethod
  def build(cls, embeddings: np.ndarray,
            index_config: Optional[IndexConfig] = None) -> "ItemIndex":
    """Builds the searcher (default configuration from the catalog size)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    index_config = index_config or default_config(len(embeddings))
    return cls(embeddings, build_searcher(embeddings, index_config),
               index_config)

  def search(self, queries: np.ndarray, n: int) -> Tuple[np.ndarray,
                                                          np.ndarray]:
    """Approximate top-n per query vector.

    Args:
      queries: float32 [Q, d].
      n: neighbours per query.

    Returns:
      (item ids int32 [Q, n], scores float32 [Q, n]).
    """
    kwargs = {"final_num_neighbors": n}
    if self.config.kind == "tree_ah":
      kwargs.update(leaves_to_search=self.config.leaves_to_search,
                    pre_reorder_num_neighbors=max(self.config.reorder, n))
    rows, scores = self.searcher.search_batched(
        np.ascontiguousarray(queries, dtype=np.float32), **kwargs)
    return rows.astype(np.int32) + 1, scores

  def top_n(self, interests: np.ndarray, n: int,
            exclude: Optional[np.ndarray] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """Top-n items per user by max over interests.

    Users are searched and merged in groups of at most `MERGE_BUDGET`
    candidates, so memory does not grow with the batch.

    Args:
      interests: float32 [B, K, d].
      n: list length.
      exclude: int [B, E] item ids to leave out (0 = none), or None.

    Returns:
      (item ids int32 [B, n], scores float32 [B, n]); a short list ends
      with id 0 and score -inf.
    """
    batch, k, dim = interests.shape
    per_interest = n + (0 if exclude is None else exclude.shape[1])
    per_interest = min(per_interest, len(self.embeddings))
    users = max(1, MERGE_BUDGET // (k * per_interest))
    merged = []
    for start in range(0, batch, users):
      group = slice(start, start + users)
      ids, scores = self.search(interests[group].reshape(-1, dim),
                                per_interest)
      merged.append(merge_over_interests_numpy(
          ids.reshape(-1, k, per_interest),
          scores.reshape(-1, k, per_interest), n,
          None if exclude is None else exclude[group]))
    return tuple(np.concatenate(part) for part in zip(*merged))

  def tune(self, queries: np.ndarray, held_out: np.ndarray,
           target: float = TARGET_RECALL) -> IndexConfig:
    """Finds cheap search parameters reaching recall@50 `target` against
    exact search on `queries` (float32 [Q, d]): doubles the leaves searched
    and the re-ordered candidates until the target is met, then backs each
    off while it still is. Records the recall measured on other queries,
    `held_out` (float32 [H, d])."""
    exact = exact_neighbours(queries, self.embeddings, RECALL_AT)

    def reaches_target():
      return neighbour_recall(self.search(queries, RECALL_AT)[0],
                              exact) >= target

    while self.config.kind == "tree_ah" and not reaches_target():
      if self.config.leaves_to_search >= self.config.num_leaves:
        break
      self.config.leaves_to_search = min(self.config.num_leaves,
                                         2 * self.config.leaves_to_search)
      self.config.reorder = min(len(self.embeddings), 2 * self.config.reorder)
    for name, floor, factor in (("reorder", RECALL_AT, 0.5),
                                ("leaves_to_search", 1, 0.8)):
      while self.config.kind == "tree_ah" and reaches_target():
        current = getattr(self.config, name)
        smaller = max(floor, int(current * factor))
        if smaller == current:
          break
        setattr(self.config, name, smaller)
        if not reaches_target():
          setattr(self.config, name, current)
          break
    self.recall_check = (held_out, exact_neighbours(held_out, self.embeddings,
                                                    RECALL_AT))
    self.config.recall = self.measure_recall()
    return self.config

  def measure_recall(self) -> Optional[float]:
    """Recall@50 of the searcher on the queries of `recall_check` (None
    without them): the recorded recall, if the index is the one that was
    exported."""
    if self.recall_check is None:
      return None
    queries, exact = self.recall_check
    return neighbour_recall(self.search(queries, RECALL_AT)[0], exact)

  def save(self, directory: str, raw_ids: np.ndarray) -> None:
    """Writes the index into `directory` (which must not exist)."""
    os.makedirs(os.path.join(directory, layout.SCANN))
    np.save(os.path.join(directory, layout.EMBEDDINGS), self.embeddings)
    np.save(os.path.join(directory, layout.RAW_IDS),
            np.asarray(raw_ids).astype(str))
    self.searcher.serialize(os.path.join(directory, layout.SCANN),
                            relative_path=True)
    with open(os.path.join(directory, layout.INDEX_CONFIG), "w") as out:
      json.dump(dataclasses.asdict(self.config), out, indent=2)
    if self.recall_check is not None:
      for name, array in zip((layout.RECALL_QUERIES, layout.RECALL_NEIGHBOURS),
                             self.recall_check):
        np.save(os.path.join(directory, name), array)

  @classmethod
  def load(cls, directory: str) -> Tuple["ItemIndex", np.ndarray]:
    """Reads an index written by `save`; returns it and the raw ids."""
    from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top
    with open(os.path.join(directory, layout.INDEX_CONFIG)) as stored:
      index_config = IndexConfig(**json.load(stored))
    embeddings = np.load(os.path.join(directory, layout.EMBEDDINGS))
    raw_ids = np.load(os.path.join(directory, layout.RAW_IDS))
    searcher = scann_ops_pybind.load_searcher(
        os.path.join(directory, layout.SCANN))
    check = [os.path.join(directory, name)
             for name in (layout.RECALL_QUERIES, layout.RECALL_NEIGHBOURS)]
    recall_check = (tuple(np.load(path) for path in check)
                    if all(map(os.path.exists, check)) else None)
    return cls(embeddings, searcher, index_config, recall_check), raw_ids


def exact_neighbours(queries: np.ndarray, embeddings: np.ndarray,
                     n: int) -> np.ndarray:
  """int32 [Q, n] item ids of the exact top-n by dot product, scoring as
  many queries at once as keep the [queries, N] scores within
  `EXACT_SCORE_BUDGET`."""
  batch = max(1, EXACT_SCORE_BUDGET // max(1, len(embeddings)))
  k = min(n, len(embeddings))
  embeddings = tf.convert_to_tensor(embeddings)
  found = [tf.math.top_k(tf.matmul(queries[start:start + batch], embeddings,
                                   transpose_b=True), k=k)[1].numpy() + 1
           for start in range(0, len(queries), batch)]
  return (np.concatenate(found) if found
          else np.zeros((0, k), np.int32))


def neighbour_recall(found: np.ndarray, exact: np.ndarray) -> float:
  """Mean over queries of |found ∩ exact| / |exact|."""
  overlap = [len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact)]
  return float(np.mean(overlap))
