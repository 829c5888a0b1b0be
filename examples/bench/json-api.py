"""json-api: a small JSON API on the standard library's threaded HTTP server, with
keep-alive and no tracing code. The Python workload of `cargo xtask bench --service python`.

GET anything answers 200 with a small JSON body and a Content-Length, on the same
connection (HTTP/1.1 keep-alive).
Usage: python3 json-api.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, keep-alive responses wait ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps({"status": "ok", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # Load generators open all their connections at once; the default backlog of 5 would
    # make some wait for a SYN retransmit.
    request_queue_size = 256


Server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000), Handler).serve_forever()
