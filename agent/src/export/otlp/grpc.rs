//! OTLP over gRPC: unary calls of already encoded requests on a lazily connected channel.

use std::{marker::PhantomData, time::Duration};

use bytes::{BufMut as _, Bytes};
use hyper::http::{HeaderMap, uri::PathAndQuery};
use prost::Message as _;
use tonic::{
    Code,
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

use super::{AttemptError, Delivered, USER_AGENT, signal::Signal};
use crate::export::config::{Compression, OtlpConfig};

pub struct GrpcTransport {
    channel: Channel,
    gzip: bool,
    metadata: MetadataMap,
}

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
        let headers: HeaderMap = config.headers.iter().cloned().collect();
        Ok(Self {
            channel: endpoint.connect_lazy(),
            gzip: config.compression == Compression::Gzip,
            metadata: MetadataMap::from_headers(headers),
        })
    }

    pub async fn send<S: Signal>(
        &self,
        message: &Bytes,
        timeout: Duration,
    ) -> Result<Delivered, AttemptError> {
        let mut request = tonic::Request::new(message.clone());
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, self.unary::<S>(request)).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(Ok(response)) => Ok(Delivered {
                rejected: S::rejected(response.get_ref()),
            }),
            Ok(Err(status)) => Err(AttemptError::Grpc {
                code: status.code(),
                message: status.message().to_owned(),
                retry_after: retry_delay(&status),
            }),
        }
    }

    async fn unary<S: Signal>(
        &self,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<S::Response>, tonic::Status> {
        let mut grpc = Grpc::new(self.channel.clone()).accept_compressed(CompressionEncoding::Gzip);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let path = PathAndQuery::from_static(S::GRPC_PATH);
        grpc.unary(request, path, EncodedCodec::<S::Response>(PhantomData))
            .await
    }
}

/// Sends requests that are already protobuf bytes and decodes the answer with prost.
struct EncodedCodec<R>(PhantomData<fn() -> R>);

impl<R: prost::Message + Default + Send + 'static> Codec for EncodedCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = EncodedCodec<()>;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec(PhantomData)
    }
}

impl Encoder for EncodedCodec<()> {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl<R: prost::Message + Default> Decoder for EncodedCodec<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Self::Error> {
        R::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
    }
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
