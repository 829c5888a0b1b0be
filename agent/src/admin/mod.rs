//! The admin endpoint: liveness, readiness and the agent's own metrics.
//!
//! `GET /healthz` answers 200 while the process runs; `GET /readyz` answers 200 once the
//! probes are attached and events flow, 503 before; `GET /metrics` serves Prometheus text.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{red::RedMetrics, telemetry::metrics::Metrics};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on admin address {addr} (--admin-addr)")]
pub struct AdminBindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The request-duration histograms, served after the agent's own counters.
    pub red: RedMetrics,
}

/// Binds first (so a bad address is a startup error), then serves in the background.
pub async fn serve(addr: SocketAddr, state: AdminState) -> Result<SocketAddr, AdminBindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminBindError { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &state)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn respond<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "ready\n".into(), "text/plain")
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting\n".into(),
            "text/plain",
        ),
        "/metrics" => {
            let mut body = state.metrics.render_prometheus();
            body.push_str(&state.red.render_prometheus());
            text(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".into(),
            "text/plain",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: bool) -> AdminState {
        let metrics = Arc::new(Metrics::default());
        AdminState {
            red: crate::red::new(crate::red::Limits::default(), Arc::clone(&metrics)).1,
            metrics,
            ready: Arc::new(AtomicBool::new(ready)),
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn readiness_follows_the_flag() {
        assert_eq!(respond(&get("/readyz"), &state(false)).status(), 503);
        assert_eq!(respond(&get("/readyz"), &state(true)).status(), 200);
        assert_eq!(respond(&get("/healthz"), &state(false)).status(), 200);
        assert_eq!(respond(&get("/nope"), &state(true)).status(), 404);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = state(true);
        s.metrics.spans_exported.add(3);
        let response = respond(&get("/metrics"), &s);
        assert_eq!(response.status(), 200);
        let body = format!("{:?}", response.body());
        assert!(body.contains("loupe_spans_exported_total 3"), "{body}");
    }

    #[tokio::test]
    async fn metrics_include_the_request_histograms() {
        use http_body_util::BodyExt as _;

        let metrics = Arc::new(Metrics::default());
        let (recorder, red) = crate::red::new(crate::red::Limits::default(), Arc::clone(&metrics));
        let s = AdminState {
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            red,
        };
        let mut span = crate::export::testutil::http_span(crate::span::SpanKind::Server, Some(200));
        span.route = Some("/users/{id}".into());
        recorder.record(&crate::export::testutil::resource("shop"), &span);
        let response = respond(&get("/metrics"), &s);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        let counters = body.find("loupe_red_series 1").unwrap();
        let histogram = body
            .find(r#"http_server_request_duration_seconds_count{service_name="shop","#)
            .unwrap_or_else(|| panic!("{body}"));
        assert!(counters < histogram, "agent counters first");
    }
}
