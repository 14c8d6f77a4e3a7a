"""``/metrics`` (prometheus-client's own WSGI app), ``/healthz`` (liveness) and ``/readyz`` (readiness).

Served by the standard library's WSGI server in a daemon thread, one request thread each
(prometheus-client's ``start_http_server`` serves only metrics; the probes need two more paths).
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # keep scrapes and probes out of the logs
        pass


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` (200 while ``alive()``, else 503) and ``/readyz``
    (200 once ``ready()``, else 503) on ``host:port`` (port 0 = any free port, see :attr:`port`).

    Args:
        port: TCP port.
        ready: readiness (partitions assigned, state restored, engine loaded).
        alive: liveness (the loop advances; see :meth:`StageRuntime.alive`). Default: always.
    """

    def __init__(self, port: int, ready: Callable[[], bool], alive: Callable[[], bool] | None = None,
                 host: str = "0.0.0.0"):
        metrics_app = make_wsgi_app()
        alive = alive or (lambda: True)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path.startswith("/metrics"):
                return metrics_app(environ, start_response)
            if path.startswith("/healthz"):
                ok, body = alive(), (b"ok\n", b"stalled\n")
            elif path.startswith("/readyz"):
                ok, body = ready(), (b"ready\n", b"not ready\n")
            else:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found\n"]
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [body[0] if ok else body[1]]

        self.httpd = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="http")
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_if_configured(port: int, ready: Callable[[], bool],
                        alive: Callable[[], bool] | None = None) -> HealthServer | None:
    """Start the server when ``port`` (``OCRSTREAM_HTTP_PORT``) is non-zero."""
    return HealthServer(port, ready, alive) if port else None
