//! What differs between the OTLP signals loupe sends (traces, metrics): the gRPC method and
//! the answer. Requests travel already encoded, so transports and retries are shared.

use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceResponse, trace::v1::ExportTraceServiceResponse,
};

/// One OTLP signal.
pub trait Signal: Send + Sync + 'static {
    type Response: prost::Message + Default + Send + 'static;

    /// The items a collector may refuse through partial success, for logs.
    const ITEMS: &'static str;

    /// The gRPC method that takes the signal's export requests.
    const GRPC_PATH: &'static str;

    /// How many items the collector refused in a successful answer.
    fn rejected(response: &Self::Response) -> i64;
}

/// `ExportTraceServiceRequest`s to the trace service, `/v1/traces`.
pub struct TraceSignal;

/// `ExportMetricsServiceRequest`s to the metrics service, `/v1/metrics`.
pub struct MetricSignal;

impl Signal for TraceSignal {
    type Response = ExportTraceServiceResponse;
    const ITEMS: &'static str = "spans";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

    fn rejected(response: &Self::Response) -> i64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_spans)
    }
}

impl Signal for MetricSignal {
    type Response = ExportMetricsServiceResponse;
    const ITEMS: &'static str = "data points";
    const GRPC_PATH: &'static str =
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

    fn rejected(response: &Self::Response) -> i64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_data_points)
    }
}
