"""catalog: the middle of a three-service chain, an ordinary Python service with no
tracing code (standard library only).

GET /process/<id> asks the stock service (nginx in `cargo xtask bench --completeness`) for
/stock/<id> and answers with its status. Every server thread keeps its own keep-alive
connection to the stock service, as a pooled HTTP client would.
Usage: python3 catalog.py PORT STOCK_PORT
"""
import http.client
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
STOCK_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
local = threading.local()


def stock(item):
    """GET /stock/<item> over this thread's connection; one retry on a fresh connection
    when the kept one was closed while idle."""
    for attempt in (1, 2):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", STOCK_PORT, timeout=10)
            local.conn = conn
        try:
            conn.request("GET", "/stock/" + item)
            response = conn.getresponse()
            body = response.read()
            return response.status, body
        except (http.client.HTTPException, OSError):
            conn.close()
            local.conn = None
            if attempt == 2:
                raise


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, keep-alive responses wait ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self):
        item = self.path.rsplit("/", 1)[-1]
        try:
            status, upstream = stock(item)
            body = b"catalog " + item.encode() + b": " + upstream
        except (http.client.HTTPException, OSError) as err:
            status, body = 502, ("stock unavailable: %s\n" % err).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
