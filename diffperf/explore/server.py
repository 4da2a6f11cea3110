"""`diffperf explore`: a local web page over the JSON API (`api.py`).

The server is Python's `http.server.ThreadingHTTPServer` with a handler that serves
exactly three things: the page (`/`, `/explore.js`, `/explore.css`, files of this
package), the JSON API (`/api/<endpoint>?...`) and 404s. No dependency is needed: the
API is GET-only, answers are small JSON objects, and the page is plain HTML, CSS and
JavaScript drawing its charts as SVG, so a web framework would add install weight
without a feature the explorer uses. The request handling that a framework would
bound is bounded here: request line ≤ `MAX_URL` bytes (414 above), GET and HEAD only
(405 otherwise, no request body is read), the `Host` header must name the address the
server listens on (blocks DNS-rebinding pages from other origins), one model evaluation
at a time, answers never include a traceback (500 with the exception's type only).

It listens on 127.0.0.1 unless `--host` says otherwise and starts in well under 5 s
(the model compiles on the first request, which a background warm-up makes early).
"""

import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from . import api

__all__ = ["add_explore", "run_explore", "make_server", "MAX_URL"]

MAX_URL = 4096  # bytes of the request target
_FILES = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
    "/explore.css": ("explore.css", "text/css; charset=utf-8"),
}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server_version = "diffperf-explore"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler API)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        return host in self.server.hosts

    def do_GET(self):  # noqa: N802 (BaseHTTPRequestHandler API)
        if len(self.path) > MAX_URL:
            return self._json(414, {"error": f"request target longer than {MAX_URL}"})
        if not self._host_ok():
            return self._json(403, {"error": "Host header does not name this server"})
        path, _, query = self.path.partition("?")
        if path in _FILES:
            name, ctype = _FILES[path]
            body = resources.files(__package__).joinpath(name).read_bytes()
            return self._send(200, body, ctype)
        if path.startswith("/api/"):
            endpoint = path[len("/api/") :]
            try:
                out = api.handle(endpoint, query, allow_paths=self.server.allow_paths)
            except api.ApiError as e:
                return self._json(e.status, {"error": str(e)})
            except Exception as e:  # never a traceback to the client
                print(f"explore: {endpoint}: {type(e).__name__}", file=sys.stderr)
                return self._json(
                    500, {"error": f"internal error ({type(e).__name__})"}
                )
            return self._json(200, out)
        return self._json(404, {"error": f"not found: {path[:100]}"})

    do_HEAD = do_GET

    def _refuse(self):
        self.close_connection = True
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET is served"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A page that dropped a stale request (newer slider value) is no error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def make_server(host: str = "127.0.0.1", port: int = 8050, *, allow_paths=False,
                verbose=False) -> ThreadingHTTPServer:  # fmt: skip
    """A bound (not yet serving) explorer server; port 0 picks a free port."""
    server = _Server((host, port), _Handler)
    server.allow_paths = allow_paths
    server.verbose = verbose
    bound = server.server_address[1]
    if host in ("0.0.0.0", "::"):  # listening everywhere: any Host names it
        server.hosts = _AnyHost()
    else:
        loopback = ("127.0.0.1", "localhost", "::1")
        names = (
            {"127.0.0.1", "localhost", "[::1]"}
            if host in loopback
            else {f"[{host}]" if ":" in host else host}
        )
        server.hosts = {f"{n}:{bound}" for n in names}
    return server


class _AnyHost:
    def __contains__(self, item) -> bool:
        return True


def add_explore(sub):
    """The `explore` subcommand."""
    p = sub.add_parser("explore", help="a local web page to explore what-ifs")
    p.add_argument("--port", type=int, default=8050, help="0: any free port")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: local)"
    )
    p.add_argument(
        "--allow-paths", action="store_true",
        help="let the page load hardware / model files by path (off: names only)",
    )  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.add_argument(
        "--no-warmup", action="store_true",
        help="do not evaluate a default job at start (first request compiles)",
    )  # fmt: skip
    p.set_defaults(json=False)


def _warmup():
    try:
        api.handle("train", "hardware=dgx_h100&model=llama3_8b&gpus=8&tp=8")
    except Exception as e:  # a warm-up failure only costs the first request its time
        print(f"explore: warm-up failed: {type(e).__name__}", file=sys.stderr)


def run_explore(args) -> dict:
    """Serve the explorer until Ctrl-C."""
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port={args.port} must be in 0..65535")
    try:
        server = make_server(args.host, args.port, allow_paths=args.allow_paths,
                             verbose=args.verbose)  # fmt: skip
    except OSError as e:
        raise ValueError(f"--port={args.port}: cannot listen: {e.strerror}") from None
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"diffperf explorer on http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    if not args.no_warmup:
        threading.Thread(target=_warmup, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return {}
