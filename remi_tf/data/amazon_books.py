"""McAuley's Amazon reviews, Books 5-core (`reviews_Books_5.json[.gz]`).

One JSON object a line; the fields used are `reviewerID`, `asin` and
`unixReviewTime`.
"""

import gzip
import json

import pandas as pd

from remi_tf.data import parsing

URL = ("http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
       "reviews_Books_5.json.gz")
FIELDS = ("reviewerID", "asin", "unixReviewTime")


def read(path: str) -> pd.DataFrame:
  """Reads the review file into an interaction log."""
  try:
    frame = pd.read_json(path, lines=True, compression="infer",
                         dtype={"reviewerID": str, "asin": str})
  except ValueError:
    _raise_first_bad_line(path)
    raise
  except (OSError, EOFError) as error:  # e.g. a corrupt .gz
    raise parsing.RawFormatError(path, None, f"cannot read: {error}") from None
  if frame.empty:
    raise parsing.RawFormatError(path, None, "no reviews in the file")
  frame.index = frame.index + 1
  missing = [field for field in FIELDS if field not in frame.columns]
  if missing:
    _raise_first_bad_line(path)
  for field in FIELDS:
    absent = frame[field].isna().to_numpy()
    if absent.any():
      raise parsing.RawFormatError(path, int(frame.index[absent.argmax()]),
                                   f"missing field '{field}'")
  seconds = parsing.to_int64(frame["unixReviewTime"].astype(str), path,
                             "unixReviewTime")
  return parsing.interaction_log(frame["reviewerID"], frame["asin"], seconds)


def _raise_first_bad_line(path: str) -> None:
  """Finds the first line that is not a review object and raises for it."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as lines:
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise parsing.RawFormatError(path, number,
                                     f"not a JSON object ({error})") from None
      absent = [field for field in FIELDS
                if not isinstance(record, dict) or field not in record]
      if absent:
        raise parsing.RawFormatError(path, number,
                                     f"missing field(s) {absent}")
