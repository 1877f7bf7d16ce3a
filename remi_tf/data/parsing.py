"""Shared pieces of the raw-format parsers: fast pandas reads whose errors
name the file and the line.

Every parser returns an interaction log: a `pandas.DataFrame` with columns
`user` (str), `item` (str) and `timestamp` (int64), one row per interaction,
in file order.
"""

import re
from typing import Optional, Sequence

import numpy as np
import pandas as pd

LOG_COLUMNS = ("user", "item", "timestamp")


class RawFormatError(ValueError):
  """A raw file does not follow its format; names the file and the line."""

  def __init__(self, path: str, line: Optional[int], message: str):
    where = f"{path}, line {line}" if line is not None else str(path)
    super().__init__(f"{where}: {message}")
    self.path = path
    self.line = line


def read_delimited(path: str, *, sep: str, names: Sequence[str],
                   header: bool, usecols: Optional[Sequence[str]] = None,
                   engine: str = "c") -> pd.DataFrame:
  """Reads a delimited text file (plain or .gz) as strings.

  Args:
    path: the file.
    sep: the field separator.
    names: the expected column names, in file order.
    header: whether the first line is a header naming those columns.
    usecols: the columns to keep (default all).
    engine: pandas parser engine ("python" for multi-character separators).

  Returns:
    A DataFrame of str columns whose index is the 1-based line number.

  Raises:
    RawFormatError: a line with the wrong number of fields, or a missing
      header column.
  """
  try:
    frame = pd.read_csv(
        path, sep=sep, header=0 if header else None,
        names=None if header else list(names), dtype=str,
        keep_default_na=False, na_filter=False, skip_blank_lines=False,
        compression="infer", engine=engine, quoting=3)
  except pd.errors.ParserError as error:
    match = re.search(r"line (\d+)", str(error))
    line = int(match.group(1)) if match else None
    raise RawFormatError(path, line, f"malformed line ({error})") from None
  except (UnicodeDecodeError, EOFError, OSError) as error:
    raise RawFormatError(path, None, f"cannot read: {error}") from None
  if header:
    missing = [name for name in names if name not in frame.columns]
    if missing:
      raise RawFormatError(
          path, 1, f"header lacks column(s) {missing}; expected {list(names)}")
  frame.index = np.arange(len(frame)) + (2 if header else 1)
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


def interaction_log(users, items, timestamps) -> pd.DataFrame:
  """Builds the interaction-log frame every parser returns."""
  return pd.DataFrame({
      "user": np.asarray(users).astype(str),
      "item": np.asarray(items).astype(str),
      "timestamp": np.asarray(timestamps, dtype=np.int64),
  })
