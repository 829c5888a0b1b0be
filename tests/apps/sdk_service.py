"""An OpenTelemetry-SDK-instrumented Python service, for loupe's tests.

It traces itself with the OpenTelemetry SDK (exporting over OTLP/HTTP to
OTEL_EXPORTER_OTLP_ENDPOINT): a SERVER span per request, continuing an incoming
traceparent, and a CLIENT span for a call to DOWNSTREAM_PORT carrying its own traceparent.
Usage: python3 sdk_service.py PORT DOWNSTREAM_PORT
"""
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("sdk-service")
DOWNSTREAM = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        ctx = extract(dict(self.headers))
        with tracer.start_as_current_span("GET /sdk", context=ctx, kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT):
                headers = {}
                inject(headers)
                conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM, timeout=5)
                conn.request("GET", "/ok", headers=headers)
                conn.getresponse().read()
                conn.close()
            body = b"sdk ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
