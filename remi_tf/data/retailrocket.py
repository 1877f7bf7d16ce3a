"""Kaggle RetailRocket `events.csv`: view events are the interactions.

Header `timestamp,visitorid,event,itemid,transactionid`; timestamps in ms.
"""

from remi_tf.data import parsing

URL = "https://www.kaggle.com/datasets/retailrocket/ecommerce-dataset"
COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")


def read(path: str) -> parsing.InteractionLog:
  """Reads `events.csv` into an interaction log of its view events."""
  log = parsing.LogBuilder()
  for frame in parsing.read_delimited(path, sep=",", names=COLUMNS,
                                      header=True, usecols=COLUMNS[:4]):
    frame = frame[frame["event"] == "view"]
    milliseconds = parsing.to_int64(frame["timestamp"], path, "timestamp")
    parsing.to_int64(frame["visitorid"], path, "visitorid")
    parsing.to_int64(frame["itemid"], path, "itemid")
    log.add(frame["visitorid"], frame["itemid"], milliseconds // 1000)
  return log.build()
