"""Taobao user behaviour (Tianchi `UserBehavior.csv`).

No header; one behaviour a line, comma-separated:
`user,item,category,behavior,timestamp` (unix seconds). The behaviours are
`pv` (a click, i.e. a page view), `buy`, `cart` and `fav`; as in ComiRec and
REMI, only clicks are interactions.
"""

from remi_tf.data import parsing

URL = "https://tianchi.aliyun.com/dataset/649"
COLUMNS = ("user", "item", "category", "behavior", "timestamp")
CLICK = "pv"


def read(path: str) -> parsing.InteractionLog:
  """Reads `UserBehavior.csv` into an interaction log of its clicks."""
  log = parsing.LogBuilder()
  for frame in parsing.read_delimited(
      path, sep=",", names=COLUMNS, header=False,
      usecols=("user", "item", "behavior", "timestamp")):
    parsing.to_int64(frame["user"], path, "user")
    parsing.to_int64(frame["item"], path, "item")
    seconds = parsing.to_int64(frame["timestamp"], path, "timestamp")
    clicks = (frame["behavior"] == CLICK).to_numpy()
    log.add(frame["user"][clicks], frame["item"][clicks], seconds[clicks])
  return log.build()
