"""A real HTTP server on 127.0.0.1, scripted per path, for download tests.

Each path gets a list of responses served in order (the last one repeats):
    ("ok", body)                  200 with Content-Length
    ("status", code)              that status, small body
    ("truncate", body, n)         200 announcing len(body) bytes, sending n, closing
    ("slow", seconds, body)       sleep before answering
    ("html",)                     200 with an HTML page (a captive portal, a login wall)
    ("hang",)                     read the request, never answer (a mirror that never responds)
    ("stall", body, n)            200 announcing len(body) bytes, sending n, then nothing more
    ("trickle", body, seconds)    200 announcing len(body) bytes, then one byte every `seconds`
    ("trickle", body, seconds, n) the same for n bytes, then nothing more

Hanging and trickling handlers stop when the client goes away or the server shuts down.
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
        self.stopping = threading.Event()
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
                try:
                    if kind == "ok":
                        self._send(200, action[1])
                    elif kind == "status":
                        self._send(action[1], b"error page")
                    elif kind == "html":
                        self._send(200, b"<html><body>Please log in</body></html>", "text/html")
                    elif kind == "truncate":
                        self._head(len(action[1]))
                        self.wfile.write(action[1][: action[2]])
                        self.wfile.flush()
                    elif kind == "hang":
                        server.stopping.wait(60)
                    elif kind == "stall":
                        self._head(len(action[1]))
                        self.wfile.write(action[1][: action[2]])
                        self.wfile.flush()
                        server.stopping.wait(60)
                    elif kind == "trickle":
                        body, every = action[1], action[2]
                        n = action[3] if len(action) > 3 else len(body)
                        self._head(len(body))
                        for i in range(n):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            if server.stopping.wait(every):
                                break
                        server.stopping.wait(60)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout, a stall, too slow): expected here
                self.close_connection = True

            def _head(self, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.flush()

            def _send(self, code, body, ctype="application/octet-stream"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, path: str, *actions: tuple) -> None:
        self.scripts[path] = list(actions)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
