//! OTLP over gRPC: unary calls of already encoded requests on a lazily connected channel.
//! loupe frames the request and reads the answer itself ([`frame`]); tonic's channel
//! carries them (HTTP/2, TLS, connecting and reconnecting).

mod frame;

use std::{
    future::poll_fn,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode, Uri, Version,
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

/// An answer larger than this is not read (tonic's default limit for a message).
const MAX_ANSWER: usize = 4 * 1024 * 1024;
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
        Ok(Self {
            channel: endpoint.connect_lazy(),
            gzip: (config.compression == Compression::Gzip).then(Mutex::default),
            headers: config
                .headers
                .iter()
                .filter(|(name, _)| !is_reserved(name))
                .cloned()
                .collect(),
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
        answer::<S>(response).await
    }
}

/// Headers the gRPC protocol sets itself, which a user's `OTEL_EXPORTER_OTLP_HEADERS` must
/// not override.
fn is_reserved(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("grpc-") || matches!(name, "te" | "content-type" | "user-agent")
}

/// A `grpc-timeout` value: at most 8 digits and a unit.
fn grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis();
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// What the collector answered: its status from the headers of a trailers-only answer or
/// from the trailers, and the items it refused from its message. An OK answer whose
/// message cannot be read still means the items were accepted.
async fn answer<S: Signal>(response: Response<Body>) -> Result<Delivered, Status> {
    let (parts, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return match status.code() {
            Code::Ok => Ok(Delivered { rejected: 0 }),
            _ => Err(status),
        };
    }
    if parts.status != StatusCode::OK {
        return Err(status_of_http(parts.status));
    }
    let collected = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(Status::from_error)?;
    match collected.trailers().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => return Err(status),
        None => return Err(status_of_http(parts.status)),
    }
    let encoding = parts
        .headers
        .get(GRPC_ENCODING)
        .and_then(|v| v.to_str().ok());
    let rejected = frame::first_message(&collected.to_bytes(), encoding, MAX_ANSWER)
        .and_then(|message| S::Response::decode(&*message).ok())
        .map_or(0, |response| S::rejected(&response));
    Ok(Delivered { rejected })
}

/// The status of an answer that carries no `grpc-status`, from its HTTP status, as gRPC
/// maps them (a proxy's error page, say).
fn status_of_http(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {status} without a gRPC status"))
}

/// Codes the OTLP specification lists as transient.
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
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
    fn answers_without_a_grpc_status_take_it_from_http() {
        assert_eq!(
            status_of_http(StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(
            status_of_http(StatusCode::TOO_MANY_REQUESTS).code(),
            Code::Unavailable
        );
        assert_eq!(
            status_of_http(StatusCode::UNAUTHORIZED).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            status_of_http(StatusCode::NOT_FOUND).code(),
            Code::Unimplemented
        );
        // A 200 that ends without a status is a broken answer, not a success.
        assert_eq!(status_of_http(StatusCode::OK).code(), Code::Unknown);
    }

    #[test]
    fn timeouts_fit_the_header() {
        assert_eq!(grpc_timeout(Duration::from_secs(10)), "10000m");
        assert_eq!(grpc_timeout(Duration::from_millis(1)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(3 * 86_400)), "259200S");
        assert_eq!(grpc_timeout(Duration::MAX), "99999999S");
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
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(is_retryable(code), "{code:?}");
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
            assert!(!is_retryable(code), "{code:?}");
        }
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
