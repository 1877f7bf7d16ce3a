"""McAuley's Amazon reviews, Books 5-core (`reviews_Books_5.json[.gz]`).

One JSON object a line; the fields used are `reviewerID`, `asin` and
`unixReviewTime` (an integer). The file is streamed through pyarrow's JSON
reader in blocks, keeping only those three fields, so the review texts are
never held. The reader keeps a bounded number of blocks in flight (a few
dozen): `parsing.BLOCK_BYTES` of 8 MB hold that to about 300 MB, and reading a 9 GB file
(the real one's size, 8.9M reviews) peaks near 1 GB in all. pyarrow's
errors do not name lines; on one, the file is scanned line by line to name
the first bad line.
"""

import gzip
import json

import pyarrow as pa
import pyarrow.json as pa_json

from remi_tf.data import parsing

URL = ("http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
       "reviews_Books_5.json.gz")
FIELDS = ("reviewerID", "asin", "unixReviewTime")
_SCHEMA = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()),
                     ("unixReviewTime", pa.int64())])


def read(path: str) -> parsing.InteractionLog:
  """Reads the review file into an interaction log."""
  log = parsing.LogBuilder()
  try:
    with pa.input_stream(path, compression="detect") as stream:
      reader = pa_json.open_json(
          stream, read_options=pa_json.ReadOptions(
              block_size=parsing.BLOCK_BYTES),
          parse_options=pa_json.ParseOptions(
              explicit_schema=_SCHEMA, unexpected_field_behavior="ignore"))
      for batch in reader:
        if any(batch.column(field).null_count for field in FIELDS):
          _raise_first_bad_line(path)
        log.add(batch.column("reviewerID").to_numpy(zero_copy_only=False),
                batch.column("asin").to_numpy(zero_copy_only=False),
                batch.column("unixReviewTime").to_numpy())
  except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
    _raise_first_bad_line(path)
    raise parsing.RawFormatError(path, None, f"cannot read: {error}") from None
  except (OSError, EOFError) as error:  # e.g. a corrupt .gz
    raise parsing.RawFormatError(path, None, f"cannot read: {error}") from None
  dataset = log.build()
  if not len(dataset):
    raise parsing.RawFormatError(path, None, "no reviews in the file")
  return dataset


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
                if not isinstance(record, dict) or record.get(field) is None]
      if absent:
        raise parsing.RawFormatError(path, number,
                                     f"missing field(s) {absent}")
      if not isinstance(record["unixReviewTime"], int):
        raise parsing.RawFormatError(
            path, number, "field 'unixReviewTime' is not a number: "
            f"{record['unixReviewTime']!r}")
