"""Shutting down without failing requests: on SIGTERM the service answers
503 to new requests, lets the ones in flight finish, then exits (as
Kubernetes expects of a pod it stops)."""

import signal

import uvicorn


class Drain:
  """Whether the service is draining, and how many requests are in flight."""

  def __init__(self):
    self.draining = False
    self.in_flight = 0


class DrainMiddleware:
  """ASGI middleware: counts requests in flight and, once `drain` is
  draining, answers new ones with `refusal` (an ASGI response, e.g. a 503
  with `Connection: close`)."""

  def __init__(self, app, drain: Drain, refusal):
    self.app = app
    self.drain = drain
    self.refusal = refusal

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    if self.drain.draining:
      return await self.refusal(scope, receive, send)
    self.drain.in_flight += 1
    try:
      await self.app(scope, receive, send)
    finally:
      self.drain.in_flight -= 1


class _DrainingServer(uvicorn.Server):
  """uvicorn's server, except that the first SIGTERM starts draining and
  the server stops once no request is in flight (a second signal, or
  SIGINT, stops it at once as uvicorn does)."""

  def __init__(self, config: uvicorn.Config, drain: Drain):
    super().__init__(config)
    self.drain = drain

  def handle_exit(self, sig, frame) -> None:
    if sig == signal.SIGTERM and not self.drain.draining:
      self.drain.draining = True
      return
    super().handle_exit(sig, frame)

  async def on_tick(self, counter: int) -> bool:
    if self.drain.draining and self.drain.in_flight == 0:
      return True
    return await super().on_tick(counter)


def run(app, drain: Drain, host: str, port: int) -> None:
  """Serves `app` (whose `DrainMiddleware` uses `drain`) until SIGINT, or
  until SIGTERM and the requests in flight have finished."""
  _DrainingServer(uvicorn.Config(app, host=host, port=port,
                                 log_level="warning"), drain).run()
