use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper::{body::Frame, http::HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use super::*;
use crate::export::otlp::{
    compress::Gzip,
    grpc::{encode_retry_info, is_retryable, retry_delay},
    signal::TraceSignal,
};

/// An answer's body: its data, then its trailers, as a collector sends them.
struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap()))
        .collect()
}

fn response(
    status: u16,
    head: &[(&'static str, &str)],
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
) -> Response<Answer> {
    let mut response = Response::new(Answer { data, trailers });
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    *response.headers_mut() = headers(head);
    response
}

fn partial_success(rejected: i64) -> Vec<u8> {
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: "too old".into(),
        }),
    }
    .encode_to_vec()
}

async fn read_answer(response: Response<Answer>) -> Result<Delivered, Status> {
    read::<TraceSignal, _>(response).await
}

#[tokio::test]
async fn ok_in_the_trailers_reads_the_refused_items_plain_or_gzipped() {
    let ok = || Some(headers(&[("grpc-status", "0")]));
    let plain = frame::frame(&partial_success(7), None).unwrap();
    let got = read_answer(response(200, &[], Some(plain), ok())).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 7 });

    let gzipped = frame::frame(&partial_success(9), Some(&mut Gzip::default())).unwrap();
    let head = [("grpc-encoding", "gzip")];
    let got = read_answer(response(200, &head, Some(gzipped.clone()), ok())).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 9 });

    // Compressed without saying how, or no message at all: accepted, nothing refused.
    let got = read_answer(response(200, &[], Some(gzipped), ok())).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 0 });
    let got = read_answer(response(200, &[], None, ok())).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 0 });
}

#[tokio::test]
async fn an_error_in_the_trailers_keeps_its_code_message_and_retry_delay() {
    let details = DETAILS_BASE64.encode(encode_retry_info(Duration::from_secs(2)));
    let trailers = headers(&[
        ("grpc-status", "14"),
        ("grpc-message", "busy%20now"),
        ("grpc-status-details-bin", &details),
    ]);
    let status = read_answer(response(200, &[], None, Some(trailers)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "busy now");
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_trailers_only_answer_is_read_from_the_headers() {
    let head = [("grpc-status", "8"), ("grpc-message", "slow down")];
    let status = read_answer(response(200, &head, None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // No RetryInfo: a collector out of room for this request is not asked again.
    assert!(!is_retryable(status.code(), retry_delay(&status)));
    let got = read_answer(response(200, &[("grpc-status", "0")], None, None)).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 0 });
}

#[tokio::test]
async fn details_that_are_not_base64_are_dropped_without_a_panic() {
    for place in ["headers", "trailers"] {
        let pairs = [
            ("grpc-status", "14"),
            ("grpc-status-details-bin", "%%% not base64 %%%"),
        ];
        let answer = match place {
            "headers" => response(200, &pairs, None, None),
            _ => response(200, &[], None, Some(headers(&pairs))),
        };
        let status = read_answer(answer).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{place}");
        assert!(status.details().is_empty(), "{place}");
    }
}

#[tokio::test]
async fn answers_without_a_grpc_status_take_it_from_http() {
    for (http, code) in [
        (503, Code::Unavailable),
        (429, Code::Unavailable),
        (401, Code::Unauthenticated),
        (404, Code::Unimplemented),
        (500, Code::Unknown),
    ] {
        let page = Some(Bytes::from_static(b"<html>proxy error</html>"));
        let status = read_answer(response(http, &[], page, None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{http}");
    }
    // A 200 that ends without a status is a broken answer, not a success.
    let cut = frame::frame(&partial_success(1), None).unwrap();
    let status = read_answer(response(200, &[], Some(cut), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
}

#[tokio::test]
async fn a_grpc_answer_is_judged_by_its_grpc_status_whatever_its_http_status() {
    let grpc = [("content-type", "application/grpc")];
    let trailers = || headers(&[("grpc-status", "8"), ("grpc-message", "over%20quota")]);
    let status = read_answer(response(500, &grpc, None, Some(trailers())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "over quota");
    // OK is OK, in the trailers or the headers.
    let ok = || Some(headers(&[("grpc-status", "0")]));
    let got = read_answer(response(503, &grpc, None, ok())).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 0 });
    let head = [
        ("content-type", "application/grpc+proto"),
        ("grpc-status", "0"),
    ];
    let got = read_answer(response(503, &head, None, None)).await;
    assert_eq!(got.unwrap(), Delivered { rejected: 0 });
    // A gRPC answer without a status falls back on its HTTP status.
    let status = read_answer(response(503, &grpc, None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // Not gRPC: a proxy's page, judged by its HTTP status, trailers or not.
    let page = Some(Bytes::from_static(b"<html>quota</html>"));
    let html = [("content-type", "text/html")];
    let status = read_answer(response(500, &html, page, Some(trailers())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    let status = read_answer(response(503, &html, None, ok()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn an_answer_past_the_limit_is_not_read_and_not_retried() {
    let huge = Bytes::from(vec![0u8; MAX_ANSWER + 1]);
    let ok = Some(headers(&[("grpc-status", "0")]));
    let status = read_answer(response(200, &[], Some(huge), ok))
        .await
        .unwrap_err();
    assert!(!is_retryable(status.code(), None), "{status:?}");
}
