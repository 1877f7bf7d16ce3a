"""Kaggle RetailRocket `events.csv`: view events are the interactions.

Header `timestamp,visitorid,event,itemid,transactionid`; timestamps in ms.
"""

from remi_tf.data import parsing

URL = "https://www.kaggle.com/datasets/retailrocket/ecommerce-dataset"
COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")

FORMAT = parsing.DelimitedFormat(
    names=COLUMNS, sep=",", header=True, user="visitorid", item="itemid",
    timestamp="timestamp", integers=("timestamp", "visitorid", "itemid"),
    timestamp_divisor=1000, keep=("event", "view"), required=COLUMNS[:4])


def read(path: str) -> parsing.InteractionLog:
  """Reads `events.csv` into an interaction log of its view events (every
  row must be well-formed, views or not)."""
  return parsing.read_delimited_log(path, FORMAT)
