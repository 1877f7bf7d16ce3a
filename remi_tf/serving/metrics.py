"""The service's Prometheus metrics (`GET /metrics`): requests and their
latency per endpoint and status, batch sizes, and the served model."""

import time
from typing import Iterable

import prometheus_client
from prometheus_client import core

from remi_tf.serving.reload import ServedModel
from remi_tf.serving.shutdown import Drain

# Latency buckets in seconds: a request takes milliseconds, a large batch
# up to a second.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                   2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OTHER_PATH = "other"


class ServiceMetrics:
  """The metrics of one service, in a registry of their own.

  Args:
    model: the served model, read at each scrape.
    paths: the endpoints' paths; requests to any other path are counted
      under "other" (so unknown paths cannot grow the label set).
    drain: the service's `Drain`, whose requests in flight are a gauge.
  """

  def __init__(self, model: ServedModel, paths: Iterable[str],
               drain: Drain):
    self.registry = prometheus_client.CollectorRegistry()
    self.paths = frozenset(paths)
    self.requests = prometheus_client.Counter(
        "remi_requests", "HTTP requests answered, by endpoint and status.",
        ["endpoint", "status"], registry=self.registry)
    self.latency = prometheus_client.Histogram(
        "remi_request_seconds", "Time from a request's arrival to the end "
        "of its answer, by endpoint.", ["endpoint"],
        buckets=LATENCY_BUCKETS, registry=self.registry)
    self.batch_size = prometheus_client.Histogram(
        "remi_batch_size", "Single requests answered in one pass.",
        buckets=BATCH_BUCKETS, registry=self.registry)
    prometheus_client.Gauge(
        "remi_requests_in_flight", "HTTP requests begun and not yet "
        "answered, this scrape included.", registry=self.registry
    ).set_function(lambda: drain.in_flight)
    self.registry.register(_ModelCollector(model))

  def export(self) -> bytes:
    """The metrics in Prometheus's text format."""
    return prometheus_client.generate_latest(self.registry)


class MetricsMiddleware:
  """ASGI middleware that counts and times every HTTP request into
  `metrics` (by the path's endpoint and the answer's status)."""

  def __init__(self, app, metrics: ServiceMetrics):
    self.app = app
    self.metrics = metrics

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start = time.perf_counter()
    status = 500  # unless a response starts

    async def send_and_record(message):
      nonlocal status
      if message["type"] == "http.response.start":
        status = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, send_and_record)
    finally:
      path = scope["path"]
      endpoint = path if path in self.metrics.paths else OTHER_PATH
      self.metrics.requests.labels(endpoint, str(status)).inc()
      self.metrics.latency.labels(endpoint).observe(
          time.perf_counter() - start)


class _ModelCollector(prometheus_client.registry.Collector):
  """The served model's figures, read when the metrics are scraped."""

  def __init__(self, model: ServedModel):
    self.model = model

  def collect(self):
    recommender = self.model.current
    yield core.GaugeMetricFamily(
        "remi_model_version", "The export version being served.",
        value=recommender.artifacts.version)
    yield core.GaugeMetricFamily(
        "remi_items_indexed", "Items in the served version's index.",
        value=len(recommender.artifacts.vocabulary))
    yield core.GaugeMetricFamily(
        "remi_model_load_seconds", "Seconds the served version took to "
        "load (user tower, item index and its recall check).",
        value=self.model.load_seconds)
    yield core.CounterMetricFamily(
        "remi_reloads", "New versions swapped in since the start.",
        value=self.model.reloads)
    yield core.CounterMetricFamily(
        "remi_refused_versions", "Versions refused as broken since the "
        "start.", value=len(self.model.refused))
