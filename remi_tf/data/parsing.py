"""Shared pieces of the raw-format parsers: chunked reads whose errors name
the file and the line, and the interning of raw ids into integer codes.

Every parser returns an `InteractionLog`: one row per interaction, in file
order, as integer arrays (user code, item code, timestamp) plus the raw-id
vocabularies in order of first appearance. Parsers read their file in
chunks of `CHUNK_LINES` lines and keep only the fields they need, so the
memory they take grows with the number of interactions and distinct ids,
not with the size of the raw text.
"""

import dataclasses
import re
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

LOG_COLUMNS = ("user", "item", "timestamp")
# Lines per chunk: large enough that per-chunk overhead is small, small
# enough that a chunk of raw strings stays near 100 MB.
CHUNK_LINES = 500_000


class RawFormatError(ValueError):
  """A raw file does not follow its format; names the file and the line."""

  def __init__(self, path: str, line: Optional[int], message: str):
    where = f"{path}, line {line}" if line is not None else str(path)
    super().__init__(f"{where}: {message}")
    self.path = path
    self.line = line


@dataclasses.dataclass(frozen=True)
class InteractionLog:
  """Interactions in file order, with ids interned to integer codes.

  Attributes:
    user_codes: int32 [n]; the raw id of row r's user is
      `user_vocab[user_codes[r]]`.
    item_codes: int32 [n], likewise into `item_vocab`.
    timestamps: int64 [n], any unit (only their order matters).
    user_vocab: str [num_users], raw user ids by first appearance.
    item_vocab: str [num_items], raw item ids by first appearance.
  """

  user_codes: np.ndarray
  item_codes: np.ndarray
  timestamps: np.ndarray
  user_vocab: np.ndarray
  item_vocab: np.ndarray

  def __len__(self) -> int:
    return len(self.timestamps)

  def rows(self):
    """[(user, item, timestamp)] with raw ids, in file order (for small
    logs: tests and inspection)."""
    return [(str(self.user_vocab[user]), str(self.item_vocab[item]),
             int(stamp)) for user, item, stamp in
            zip(self.user_codes, self.item_codes, self.timestamps)]


class _Interner:
  """Gives each distinct raw id a code 0, 1, ... in order of first
  appearance, over successive chunks."""

  def __init__(self):
    self._codes: Dict[str, int] = {}

  def codes(self, values) -> np.ndarray:
    """int32 [len(values)]: the codes of a chunk of raw ids (str)."""
    local, uniques = pd.factorize(np.asarray(values, dtype=object))
    table = self._codes
    # `uniques` is in order of first appearance within the chunk, so new
    # ids get their codes in order of first appearance in the file.
    known = np.fromiter((table.setdefault(value, len(table))
                         for value in uniques), dtype=np.int32,
                        count=len(uniques))
    return known[local]

  def vocab(self) -> np.ndarray:
    """str [num_ids]: the raw ids, by code."""
    return np.array(list(self._codes), dtype=str)


class LogBuilder:
  """Collects a parser's chunks into an `InteractionLog`."""

  def __init__(self):
    self._users, self._items = _Interner(), _Interner()
    self._chunks = []

  def add(self, users, items, timestamps) -> None:
    """Appends a chunk: raw user and item ids (str) and int timestamps."""
    self._chunks.append((self._users.codes(users), self._items.codes(items),
                         np.asarray(timestamps, dtype=np.int64)))

  def build(self) -> InteractionLog:
    """The log of every chunk added, in order."""
    columns = [np.concatenate([chunk[index] for chunk in self._chunks])
               if self._chunks else np.zeros(0, dtype)
               for index, dtype in enumerate((np.int32, np.int32, np.int64))]
    self._chunks = []
    return InteractionLog(*columns, user_vocab=self._users.vocab(),
                          item_vocab=self._items.vocab())


def interaction_log(users, items, timestamps) -> InteractionLog:
  """An `InteractionLog` from whole columns of raw ids and timestamps."""
  builder = LogBuilder()
  builder.add(users, items, timestamps)
  return builder.build()


def read_delimited(path: str, *, sep: str, names: Sequence[str],
                   header: bool, usecols: Optional[Sequence[str]] = None,
                   engine: str = "c") -> Iterator[pd.DataFrame]:
  """Reads a delimited text file (plain or .gz) as strings, in chunks.

  Args:
    path: the file.
    sep: the field separator.
    names: the expected column names, in file order.
    header: whether the first line is a header naming those columns.
    usecols: the columns to keep (default all).
    engine: pandas parser engine ("python" for multi-character separators).

  Yields:
    DataFrames of str columns, at most `CHUNK_LINES` rows each, whose index
    is the 1-based line number; blank lines are dropped.

  Raises:
    RawFormatError: a line with the wrong number of fields, a missing
      field, or a missing header column.
  """
  try:
    reader = pd.read_csv(
        path, sep=sep, header=0 if header else None,
        names=None if header else list(names), dtype=str,
        keep_default_na=False, na_filter=False, skip_blank_lines=False,
        compression="infer", engine=engine, quoting=3,
        chunksize=CHUNK_LINES)
    with reader:
      first_line = 2 if header else 1
      for frame in reader:
        if header:
          _check_header(frame, names, path)
        frame.index = frame.index + first_line
        yield _checked_chunk(frame, usecols, path)
  except pd.errors.ParserError as error:
    match = re.search(r"line (\d+)", str(error))
    line = int(match.group(1)) if match else None
    raise RawFormatError(path, line, f"malformed line ({error})") from None
  except (UnicodeDecodeError, EOFError, OSError) as error:
    raise RawFormatError(path, None, f"cannot read: {error}") from None


def _check_header(frame: pd.DataFrame, names: Sequence[str],
                  path: str) -> None:
  missing = [name for name in names if name not in frame.columns]
  if missing:
    raise RawFormatError(
        path, 1, f"header lacks column(s) {missing}; expected {list(names)}")


def _checked_chunk(frame: pd.DataFrame, usecols: Optional[Sequence[str]],
                   path: str) -> pd.DataFrame:
  """Drops blank lines and unused columns; raises on an empty field."""
  if usecols is not None:
    frame = frame[list(usecols)]
  blank = (frame == "").all(axis=1)
  if blank.any():
    frame = frame[~blank]
  for column in frame.columns:
    empty = frame[column] == ""
    if empty.any():
      raise RawFormatError(path, int(frame.index[empty.argmax()]),
                           f"missing field '{column}'")
  return frame


def to_int64(values: pd.Series, path: str, field: str) -> np.ndarray:
  """Parses an integer column; the error names the first bad line."""
  numbers = pd.to_numeric(values, errors="coerce")
  bad = numbers.isna().to_numpy()
  if bad.any():
    line = int(values.index[bad.argmax()])
    raise RawFormatError(path, line,
                         f"field '{field}' is not a number: {values[line]!r}")
  return numbers.to_numpy().astype(np.int64)


def to_epoch_seconds(values: pd.Series, path: str, field: str,
                     time_format: str) -> np.ndarray:
  """Parses a UTC time column into unix seconds; errors name the line."""
  times = pd.to_datetime(values, format=time_format, errors="coerce", utc=True)
  bad = times.isna().to_numpy()
  if bad.any():
    line = int(values.index[bad.argmax()])
    raise RawFormatError(path, line,
                         f"field '{field}' is not a time: {values[line]!r}")
  return times.dt.as_unit("s").astype("int64").to_numpy()
