"""data-processor: an ordinary Python service with no tracing code.

GET /process/<id> answers after a little work; /process/fail answers 500.
Usage: python3 data-processor.py PORT
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, keep-alive responses wait ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self):
        item = self.path.rsplit("/", 1)[-1]
        time.sleep(0.01)
        status = 500 if item == "fail" else 200
        body = ("processed %s\n" % item).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000), Handler).serve_forever()
