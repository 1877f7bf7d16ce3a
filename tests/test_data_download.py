"""Downloads of raw files: success (from a local HTTP server), the offline
error and its clean-up. Network traffic goes to 127.0.0.1 only."""

import dataclasses
import http.server
import io
import os
import threading
import zipfile

import pytest

from conftest import FIXTURES
from remi_tf.data import download, load_dataset, registry
from remi_tf.data.registry import DatasetSource

GOWALLA_RAW = os.path.join(FIXTURES, "raw", "gowalla.txt.gz")
# Port 9 (discard) is closed here: connections are refused at once.
UNREACHABLE = "http://127.0.0.1:9/file.txt.gz"


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
  """No proxy for 127.0.0.1, and no retry back-off (tfds retries a refused
  connection 10 times with exponential back-off, over 3 minutes)."""
  for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
               "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(downloader, "MAX_RETRIES", 0)


def ratings_zip(num_users=12, per_user=6):
  """A MovieLens-1M-like archive: ml-1m/ratings.dat inside a zip."""
  lines = []
  for user in range(1, num_users + 1):
    for step in range(per_user):
      lines.append(f"{user}::{100 + step}::{1 + step % 5}::"
                   f"{978300000 + 60 * step + user}")
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    archive.writestr("ml-1m/README", "MovieLens 1M, fake\n")
    archive.writestr("ml-1m/ratings.dat", "\n".join(lines) + "\n")
  return buffer.getvalue(), "\n".join(lines) + "\n"


class Server:
  """A local HTTP server with a few fixed routes; counts requests."""

  def __init__(self):
    with open(GOWALLA_RAW, "rb") as raw:
      self.gowalla = raw.read()
    self.zip_bytes, self.ratings = ratings_zip()
    self.requests = []
    routes = {"/gowalla.txt.gz": self.gowalla, "/ml-1m.zip": self.zip_bytes}
    requests = self.requests

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        requests.append(self.path)
        if self.path in routes:
          body = routes[self.path]
          self.send_response(200)
          self.send_header("Content-Length", str(len(body)))
          self.end_headers()
          self.wfile.write(body)
        elif self.path == "/truncated.txt.gz":
          # Promises 100 kB, sends 1 kB, hangs up: a half-written download.
          self.send_response(200)
          self.send_header("Content-Length", "100000")
          self.end_headers()
          self.wfile.write(b"\x1f\x8b" + b"x" * 1000)
          self.wfile.flush()
          self.close_connection = True
        else:
          self.send_error(404)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join()


@pytest.fixture(name="server")
def fixture_server():
  server = Server()
  yield server
  server.close()


def gowalla_source(url, **extra):
  return DatasetSource(registry.SOURCES["gowalla"].read, url, **extra)


def listing(directory):
  """Every path under `directory` (relative), with file sizes."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), directory)] = "dir"
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = os.path.getsize(path)
  return out


@pytest.fixture(name="download_dir")
def fixture_download_dir(tmp_path):
  """A download directory that already holds an earlier download."""
  directory = tmp_path / "downloads"
  (directory / "earlier").mkdir(parents=True)
  (directory / "earlier" / "events.csv").write_text("timestamp\n")
  (directory / "notes.txt").write_text("keep me\n")
  return str(directory)


@pytest.mark.parametrize("archive_member", [None, "ml-1m/ratings.dat"])
def test_unreachable_url(download_dir, archive_member):
  before = listing(download_dir)
  spec = gowalla_source(UNREACHABLE, archive_member=archive_member)
  with pytest.raises(download.DownloadError) as error:
    download.fetch("gowalla", spec, download_dir)
  message = str(error.value)
  assert UNREACHABLE in message
  assert "--raw-file" in message
  assert message.startswith("gowalla: ")
  assert listing(download_dir) == before


@pytest.mark.parametrize("path", ["/truncated.txt.gz", "/missing.txt.gz"])
def test_failed_transfer_leaves_nothing_behind(server, download_dir, path):
  before = listing(download_dir)
  url = server.url + path
  with pytest.raises(download.DownloadError) as error:
    download.fetch("gowalla", gowalla_source(url), download_dir)
  assert url in str(error.value) and "--raw-file" in str(error.value)
  assert server.requests == [path]
  assert listing(download_dir) == before


def test_fresh_download_dir_is_left_empty(tmp_path):
  directory = str(tmp_path / "new" / "downloads")
  with pytest.raises(download.DownloadError):
    download.fetch("gowalla", gowalla_source(UNREACHABLE), directory)
  assert os.listdir(tmp_path) == []


def test_failed_transfer_removes_folders_it_created(server, tmp_path):
  directory = str(tmp_path / "new" / "downloads")
  with pytest.raises(download.DownloadError):
    download.fetch("gowalla", gowalla_source(server.url + "/truncated.txt.gz"),
                   directory)
  assert server.requests == ["/truncated.txt.gz"]
  assert os.listdir(tmp_path) == []


def test_run_that_cannot_download_writes_nothing(server, tmp_path,
                                                 monkeypatch):
  from remi_tf import runs  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(registry.SOURCES, "gowalla", gowalla_source(
      server.url + "/truncated.txt.gz"))
  run_config = runs.resolve_config("gowalla", max_steps=10)
  run_dir, home = tmp_path / "run", tmp_path / "home"
  with pytest.raises(download.DownloadError):
    runs.train_run(run_config, str(run_dir), str(tmp_path / "export"),
                   cache_dir=str(home))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["retailrocket", "csv"])
def test_no_url_says_pass_raw_file(tmp_path, name):
  directory = str(tmp_path / "downloads")
  spec = registry.source(name)
  assert spec.url is None
  with pytest.raises(download.DownloadError) as error:
    download.fetch(name, spec, directory)
  message = str(error.value)
  assert message.startswith(f"{name}: ")
  assert "--raw-file PATH" in message
  assert spec.manual in message
  assert not os.path.exists(directory)


def test_retailrocket_message_points_at_kaggle(tmp_path):
  with pytest.raises(download.DownloadError, match="kaggle.com") as error:
    load_dataset("retailrocket", cache_dir=str(tmp_path))
  assert "events.csv" in str(error.value)
  assert os.listdir(tmp_path) == []


def test_download_and_reuse(server, download_dir):
  url = server.url + "/gowalla.txt.gz"
  path = download.fetch("gowalla", gowalla_source(url), download_dir)
  assert isinstance(path, str)
  assert os.path.dirname(os.path.abspath(path)) == os.path.abspath(
      download_dir)
  with open(path, "rb") as got:
    assert got.read() == server.gowalla
  assert not [name for name in os.listdir(download_dir)
              if "tmp" in name.lower()]
  # Found in the download directory, not fetched again.
  assert download.fetch("gowalla", gowalla_source(url), download_dir) == path
  assert server.requests == ["/gowalla.txt.gz"]
  log = registry.source("gowalla").read(path)
  assert [user for user, _, _ in log.rows()] == ["0"] * 4 + ["1"] * 3 + ["2"]


def test_download_extracts_archive_member(server, download_dir):
  spec = gowalla_source(server.url + "/ml-1m.zip",
                        archive_member="ml-1m/ratings.dat")
  path = download.fetch("movielens-1m", spec, download_dir)
  assert path.endswith(os.path.join("ml-1m", "ratings.dat"))
  assert os.path.abspath(path).startswith(os.path.abspath(download_dir))
  with open(path) as got:
    assert got.read() == server.ratings


def test_load_dataset_downloads_into_cache_home(server, tmp_path,
                                                monkeypatch):
  home = str(tmp_path / "home")
  monkeypatch.setitem(registry.SOURCES, "movielens-1m", dataclasses.replace(
      registry.SOURCES["movielens-1m"], url=server.url + "/ml-1m.zip"))
  dataset = load_dataset("movielens-1m", threshold=5, cache_dir=home)
  assert dataset.stats["users"] == 12 and dataset.stats["items"] == 6
  assert dataset.stats["interactions"] == 72
  assert sorted(os.listdir(home)) == ["downloads", "preprocessed"]
  again = load_dataset("movielens-1m", threshold=5, cache_dir=home)
  assert again.stats == dataset.stats
  assert server.requests == ["/ml-1m.zip"]


def test_cache_home(monkeypatch, tmp_path):
  monkeypatch.setenv("REMI_TF_HOME", str(tmp_path / "env"))
  assert download.cache_home() == str(tmp_path / "env")
  assert download.cache_home(str(tmp_path / "flag")) == str(tmp_path / "flag")
  monkeypatch.delenv("REMI_TF_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "user"))
  assert download.cache_home() == os.path.join(
      str(tmp_path / "user"), ".cache", "remi-tf")
