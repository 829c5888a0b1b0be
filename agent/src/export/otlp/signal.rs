//! What differs between the OTLP signals loupe sends (traces, metrics): the messages, the
//! gRPC service and the HTTP path. Transports and retries are shared.

use std::future::Future;

use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_client::TraceServiceClient,
    },
};
use tonic::{codec::CompressionEncoding, transport::Channel};

/// One OTLP signal.
pub trait Signal: Send + Sync + 'static {
    type Request: prost::Message + Clone + Send + Sync + 'static;
    type Response: prost::Message + Default + Send + 'static;

    /// The items a collector may refuse through partial success, for logs.
    const ITEMS: &'static str;

    /// How many items the collector refused in a successful answer.
    fn rejected(response: &Self::Response) -> i64;

    /// Calls the signal's `Export` on `channel`.
    fn grpc_export(
        channel: Channel,
        gzip: bool,
        request: tonic::Request<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send;
}

/// `ExportTraceServiceRequest`s to the trace service, `/v1/traces`.
pub struct TraceSignal;

/// `ExportMetricsServiceRequest`s to the metrics service, `/v1/metrics`.
pub struct MetricSignal;

impl Signal for TraceSignal {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const ITEMS: &'static str = "spans";

    fn rejected(response: &Self::Response) -> i64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_spans)
    }

    async fn grpc_export(
        channel: Channel,
        gzip: bool,
        request: tonic::Request<Self::Request>,
    ) -> Result<tonic::Response<Self::Response>, tonic::Status> {
        let mut client =
            TraceServiceClient::new(channel).accept_compressed(CompressionEncoding::Gzip);
        if gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        client.export(request).await
    }
}

impl Signal for MetricSignal {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    const ITEMS: &'static str = "data points";

    fn rejected(response: &Self::Response) -> i64 {
        response
            .partial_success
            .as_ref()
            .map_or(0, |p| p.rejected_data_points)
    }

    async fn grpc_export(
        channel: Channel,
        gzip: bool,
        request: tonic::Request<Self::Request>,
    ) -> Result<tonic::Response<Self::Response>, tonic::Status> {
        let mut client =
            MetricsServiceClient::new(channel).accept_compressed(CompressionEncoding::Gzip);
        if gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        client.export(request).await
    }
}
