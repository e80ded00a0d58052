"""A real HTTP server on 127.0.0.1, scripted per path, for download tests.

Each path gets a list of responses served in order (the last one repeats):
    ("ok", body)               200 with Content-Length
    ("status", code)           that status, small body
    ("truncate", body, n)      200 announcing len(body) bytes, sending n, closing
    ("slow", seconds, body)    sleep before answering
    ("html",)                  200 with an HTML page (a captive portal, a login wall)
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple]] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802 - the stdlib's name
                with server.lock:
                    n = server.hits[self.path]
                    server.hits[self.path] += 1
                script = server.scripts.get(self.path, [("status", 404)])
                action = script[min(n, len(script) - 1)]
                kind = action[0]
                if kind == "slow":
                    time.sleep(action[1])
                    action = ("ok", action[2])
                    kind = "ok"
                if kind == "ok":
                    self._send(200, action[1])
                elif kind == "status":
                    self._send(action[1], b"error page")
                elif kind == "html":
                    self._send(200, b"<html><body>Please log in</body></html>", "text/html")
                elif kind == "truncate":
                    body, cut = action[1], action[2]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True

            def _send(self, code, body, ctype="application/octet-stream"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a read timeout): expected in the slow tests

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, path: str, *actions: tuple) -> None:
        self.scripts[path] = list(actions)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
