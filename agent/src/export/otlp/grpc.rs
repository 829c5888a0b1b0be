//! OTLP over gRPC: unary calls of already encoded requests on a lazily connected channel.
//! loupe frames the request and reads the answer itself ([`frame`]); tonic's channel
//! carries them (HTTP/2, TLS, connecting and reconnecting).

mod answer;
mod frame;

use std::{
    future::poll_fn,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Uri, Version,
    header::{CONTENT_TYPE, TE},
    http::{HeaderName, HeaderValue},
};
use prost::Message as _;
use tonic::{
    Code, Status,
    body::Body,
    client::GrpcService as _,
    transport::{Channel, Endpoint},
};

use super::{AttemptError, Delivered, USER_AGENT, compress::Gzip, signal::Signal};
use crate::export::config::{Compression, OtlpConfig};

const GRPC_ENCODING: &str = "grpc-encoding";

pub struct GrpcTransport {
    channel: Channel,
    /// The compressor, when exports are gzipped.
    gzip: Option<Mutex<Gzip>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A request body ready to be sent as many times as retries need.
pub struct GrpcBody(Bytes);

impl GrpcTransport {
    /// Must run inside a tokio runtime. Does not connect: a collector that is not up yet is
    /// reached on the first export.
    pub fn new(config: &OtlpConfig) -> Result<Self, tonic::transport::Error> {
        let mut endpoint = Endpoint::from(config.endpoint.clone())
            .user_agent(USER_AGENT)?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if config.is_tls() {
            endpoint = endpoint.tls_config(super::tls::grpc(&config.tls))?;
        }
        let (reserved, headers): (Vec<_>, Vec<_>) = config
            .headers
            .iter()
            .cloned()
            .partition(|(name, _)| is_reserved(name));
        for (name, _) in reserved {
            log::warn!("OTLP header {name} is not sent: gRPC sets it itself");
        }
        Ok(Self {
            channel: endpoint.connect_lazy(),
            gzip: (config.compression == Compression::Gzip).then(Mutex::default),
            headers,
        })
    }

    /// The body for an encoded export request: one gRPC message, compressed when configured.
    pub fn encode(&self, message: &[u8]) -> Result<GrpcBody, AttemptError> {
        let mut gzip = self
            .gzip
            .as_ref()
            .map(|g| g.lock().unwrap_or_else(PoisonError::into_inner));
        frame::frame(message, gzip.as_deref_mut())
            .map(GrpcBody)
            .map_err(AttemptError::Compress)
    }

    pub async fn send<S: Signal>(
        &self,
        body: &GrpcBody,
        timeout: Duration,
    ) -> Result<Delivered, AttemptError> {
        match tokio::time::timeout(timeout, self.call::<S>(body, timeout)).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(Ok(delivered)) => Ok(delivered),
            Ok(Err(status)) => Err(AttemptError::Grpc {
                code: status.code(),
                message: status.message().to_owned(),
                retry_after: retry_delay(&status),
            }),
        }
    }

    async fn call<S: Signal>(
        &self,
        body: &GrpcBody,
        timeout: Duration,
    ) -> Result<Delivered, Status> {
        let mut request = Request::new(Body::new(Full::new(body.0.clone())));
        *request.method_mut() = Method::POST;
        *request.version_mut() = Version::HTTP_2;
        // The channel adds the endpoint's scheme and authority.
        *request.uri_mut() = Uri::from_static(S::GRPC_PATH);
        let headers = request.headers_mut();
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
        if self.gzip.is_some() {
            headers.insert(GRPC_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Ok(value) = HeaderValue::from_str(&grpc_timeout(timeout)) {
            headers.insert("grpc-timeout", value);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        let mut channel = self.channel.clone();
        poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        let response = channel
            .call(request)
            .await
            .map_err(|e| Status::from_error(Box::new(e)))?;
        answer::read::<S, _>(response).await
    }
}

/// Headers the gRPC protocol sets itself, which a user's `OTEL_EXPORTER_OTLP_HEADERS` must
/// not override.
fn is_reserved(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("grpc-") || matches!(name, "te" | "content-type" | "user-agent")
}

/// A `grpc-timeout` value: at most 8 digits and a unit, rounded up (a deadline of 0 would
/// end the call before it starts; tonic's channel enforces the header itself).
fn grpc_timeout(timeout: Duration) -> String {
    let micros = timeout.as_micros().max(1);
    if micros < 100_000_000 {
        return format!("{micros}u");
    }
    let millis = micros.div_ceil(1000);
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// Codes the OTLP specification lists as transient. RESOURCE_EXHAUSTED is transient only
/// when the collector says when to try again (`retry_after`, from its RetryInfo): a
/// request larger than it takes answers the same and would fail again.
pub fn is_retryable(code: Code, retry_after: Option<Duration>) -> bool {
    match code {
        Code::ResourceExhausted => retry_after.is_some(),
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        _ => false,
    }
}

// The parts of `google.rpc.Status` and `google.rpc.RetryInfo` a collector uses to ask for
// a pause. Declared here rather than pulling in a crate of well-known types for one field.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The delay a server asked for in the status details, if any.
fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    retry_delay_from_details(status.details())
}

fn retry_delay_from_details(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|a| a.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.as_slice()).ok()?.retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?;
    Some(Duration::new(seconds, nanos.min(999_999_999)))
}

#[cfg(test)]
pub(crate) fn encode_retry_info(delay: Duration) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    RpcStatus {
        details: vec![ProtoAny {
            type_url: RETRY_INFO_TYPE.to_owned(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_fit_the_header() {
        assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000000u");
        assert_eq!(grpc_timeout(Duration::from_millis(1)), "1000u");
        // What is left of a deadline may be under a microsecond: never 0.
        assert_eq!(grpc_timeout(Duration::from_nanos(300)), "1u");
        assert_eq!(grpc_timeout(Duration::ZERO), "1u");
        assert_eq!(grpc_timeout(Duration::from_secs(100)), "100000m");
        assert_eq!(grpc_timeout(Duration::from_micros(100_000_001)), "100001m");
        assert_eq!(grpc_timeout(Duration::from_secs(86_400)), "86400000m");
        assert_eq!(grpc_timeout(Duration::from_secs(3 * 86_400)), "259200S");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout(Duration::MAX), "99999999S");
    }

    #[tokio::test]
    async fn a_transport_sends_the_users_headers_but_not_reserved_ones() {
        let config = OtlpConfig {
            endpoint: "http://127.0.0.1:4317".parse().unwrap(),
            protocol: crate::export::config::Protocol::Grpc,
            headers: vec![
                (
                    HeaderName::from_static("grpc-timeout"),
                    HeaderValue::from_static("1n"),
                ),
                (
                    HeaderName::from_static("authorization"),
                    HeaderValue::from_static("Bearer t"),
                ),
            ],
            timeout: Duration::from_secs(1),
            compression: Compression::Gzip,
            tls: Default::default(),
        };
        let transport = GrpcTransport::new(&config).unwrap();
        let names: Vec<&str> = transport.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["authorization"]);
        assert!(transport.gzip.is_some());
    }

    #[test]
    fn user_headers_cannot_replace_the_protocols() {
        for name in [
            "grpc-encoding",
            "grpc-timeout",
            "te",
            "content-type",
            "user-agent",
        ] {
            assert!(is_reserved(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["authorization", "x-api-key", "x-scope-orgid"] {
            assert!(!is_reserved(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn retryable_codes_follow_the_otlp_spec() {
        let pause = Some(Duration::from_secs(1));
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(is_retryable(code, None), "{code:?}");
            assert!(is_retryable(code, pause), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(!is_retryable(code, None), "{code:?}");
            assert!(!is_retryable(code, pause), "{code:?}");
        }
        // Only a collector that says when it can take more is asked again.
        assert!(is_retryable(Code::ResourceExhausted, pause));
        assert!(!is_retryable(Code::ResourceExhausted, None));
    }

    #[test]
    fn retry_info_round_trip() {
        let details = encode_retry_info(Duration::from_millis(1500));
        assert_eq!(
            retry_delay_from_details(&details),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn malformed_or_missing_retry_info_is_ignored() {
        assert_eq!(retry_delay_from_details(&[]), None);
        assert_eq!(retry_delay_from_details(&[0xff, 0xff, 0xff]), None);
        let other = RpcStatus {
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.DebugInfo".to_owned(),
                value: vec![1, 2, 3],
            }],
        };
        assert_eq!(retry_delay_from_details(&other.encode_to_vec()), None);
        let negative = RpcStatus {
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.to_owned(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: -1,
                        nanos: 0,
                    }),
                }
                .encode_to_vec(),
            }],
        };
        assert_eq!(retry_delay_from_details(&negative.encode_to_vec()), None);
    }
}
