"""A user's own log: CSV (or .csv.gz) with header `user_id,item_id,timestamp`.

Ids are any strings; timestamps are integers. Only their order matters,
except to the towers that read time intervals (`pimirec`), which take them
as seconds (unix time): a log in another unit gives them other intervals.
"""

from remi_tf.data import parsing

URL = None
COLUMNS = ("user_id", "item_id", "timestamp")

FORMAT = parsing.DelimitedFormat(
    names=COLUMNS, sep=",", header=True, user="user_id", item="item_id",
    timestamp="timestamp", integers=("timestamp",), required=COLUMNS)


def read(path: str) -> parsing.InteractionLog:
  """Reads the CSV into an interaction log."""
  return parsing.read_delimited_log(path, FORMAT)
