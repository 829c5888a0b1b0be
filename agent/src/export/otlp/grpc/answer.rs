//! A collector's answer to a gRPC export: its status, from the headers of a trailers-only
//! answer, else from the trailers, else from the HTTP status (also first, for an answer
//! that is not gRPC and not a 200); and from its message the items it refused.

use std::error::Error;

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::{
    Response, StatusCode,
    body::Body,
    http::{HeaderMap, header::CONTENT_TYPE},
};
use prost::Message as _;
use tonic::{Code, Status};

use super::{GRPC_ENCODING, frame};
use crate::export::otlp::{Delivered, signal::Signal};

/// An answer larger than this is not read (tonic's default limit for a message). Such an
/// answer fails as `Unknown`, which is not retried: the collector may have taken the batch.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

const GRPC_STATUS: &str = "grpc-status";
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

/// How tonic decodes `grpc-status-details-bin`, which it expects to succeed.
const DETAILS_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the collector answered. An OK answer whose message cannot be read still means the
/// items were accepted.
pub async fn read<S: Signal, B>(response: Response<B>) -> Result<Delivered, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let (parts, body) = response.into_parts();
    // A gRPC answer carries its status in its headers (trailers-only) or its trailers,
    // whatever its HTTP status; anything else that is not a 200 (a proxy's error page) is
    // judged by its HTTP status, as gRPC clients do.
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc && parts.status != StatusCode::OK {
        return Err(status_of_http(parts.status));
    }
    if let Some(status) = status_in(&parts.headers) {
        return match status.code() {
            Code::Ok => Ok(Delivered { rejected: 0 }),
            _ => Err(status),
        };
    }
    let collected = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(Status::from_error)?;
    match collected.trailers().and_then(status_in) {
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

/// The status in `headers`, if they carry one. tonic panics on details that are not
/// base64, so such details are dropped first: a broken collector or proxy must not bring
/// down the exporter.
fn status_in(headers: &HeaderMap) -> Option<Status> {
    headers.get(GRPC_STATUS)?;
    match headers.get(GRPC_STATUS_DETAILS) {
        Some(details) if DETAILS_BASE64.decode(details.as_bytes()).is_err() => {
            let mut headers = headers.clone();
            headers.remove(GRPC_STATUS_DETAILS);
            Status::from_header_map(&headers)
        }
        _ => Status::from_header_map(headers),
    }
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

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
