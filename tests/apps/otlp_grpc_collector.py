"""otlp_grpc_collector: an OTLP/gRPC trace receiver on grpcio (gRPC's C core), a gRPC peer
that shares no code with loupe or tonic. It refuses REJECT spans of every export through
partial success.

Usage: python3 otlp_grpc_collector.py PORT OUT_FILE [REJECT]
Prints "listening" once it accepts calls; writes one JSON line per export to OUT_FILE:
{"spans": [{"name": ..., "attributes": {...}}], "metadata": {...}}.
"""
import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out, reject):
        self.out = out
        self.reject = reject

    def Export(self, request, context):
        spans = [
            {"name": span.name, "attributes": {a.key: value(a.value) for a in span.attributes}}
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        metadata = {k: v for k, v in context.invocation_metadata()}
        with open(self.out, "a") as f:
            f.write(json.dumps({"spans": spans, "metadata": metadata}) + "\n")
        rejected = min(self.reject, len(spans))
        return trace_service_pb2.ExportTraceServiceResponse(
            partial_success=trace_service_pb2.ExportTracePartialSuccess(
                rejected_spans=rejected, error_message="refused by the test collector"
            )
            if rejected
            else None
        )


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    reject = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(out, reject), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


main()
