//! OTLP over HTTP: a protobuf body POSTed to the signal's URL.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, StatusCode, Uri,
    header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT as USER_AGENT_HEADER},
    http::{HeaderName, HeaderValue},
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message;

use super::{
    AttemptError, Delivered, OtlpStartError, USER_AGENT, compress::Gzip, retry::parse_retry_after,
    signal::Signal, tls,
};
use crate::export::config::{Compression, OtlpConfig};

/// A response body larger than this is not read: a success needs only its partial-success
/// counts, which fit easily.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// A client for plain HTTP, or one that speaks only TLS (an `https://` endpoint).
enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl HttpClient {
    async fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            HttpClient::Plain(client) => client.request(request).await,
            HttpClient::Tls(client) => client.request(request).await,
        }
    }
}

pub struct HttpTransport {
    client: HttpClient,
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The compressor, when exports are gzipped.
    gzip: Option<Mutex<Gzip>>,
}

/// A request body ready to be sent as many times as retries need.
pub struct HttpBody {
    bytes: Bytes,
    gzip: bool,
}

impl HttpTransport {
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpStartError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2);
        let client = if config.is_tls() {
            // The TLS layer is handed the https:// URLs, so the TCP layer must accept them.
            connector.enforce_http(false);
            let tls = tls::http(&config.tls).map_err(|source| OtlpStartError::Tls {
                endpoint: config.endpoint.to_string(),
                source,
            })?;
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .wrap_connector(connector);
            HttpClient::Tls(builder.build(connector))
        } else {
            HttpClient::Plain(builder.build(connector))
        };
        Ok(Self {
            client,
            endpoint: config.endpoint.clone(),
            headers: config.headers.clone(),
            gzip: (config.compression == Compression::Gzip).then(Mutex::default),
        })
    }

    /// The body for an encoded export request, compressed when configured.
    pub fn encode(&self, plain: Bytes) -> Result<HttpBody, AttemptError> {
        let Some(gzip) = &self.gzip else {
            return Ok(HttpBody {
                bytes: plain,
                gzip: false,
            });
        };
        let compressed = gzip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .compress(Vec::new(), &plain)
            .map_err(AttemptError::Compress)?;
        Ok(HttpBody {
            bytes: compressed.into(),
            gzip: true,
        })
    }

    pub async fn send<S: Signal>(
        &self,
        body: &HttpBody,
        timeout: Duration,
    ) -> Result<Delivered, AttemptError> {
        match tokio::time::timeout(timeout, self.send_inner::<S>(body)).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Timeout),
        }
    }

    async fn send_inner<S: Signal>(&self, body: &HttpBody) -> Result<Delivered, AttemptError> {
        let mut builder = Request::post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(USER_AGENT_HEADER, USER_AGENT);
        if body.gzip {
            builder = builder.header(CONTENT_ENCODING, "gzip");
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body.bytes.clone()))
            .map_err(AttemptError::BuildRequest)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(AttemptError::Connection)?;
        let status = response.status();
        if status.is_success() {
            // A body that cannot be read or decoded still means the items were accepted.
            let rejected = match Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
            {
                Ok(collected) => {
                    S::Response::decode(collected.to_bytes()).map_or(0, |r| S::rejected(&r))
                }
                Err(_) => 0,
            };
            return Ok(Delivered { rejected });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Err(AttemptError::Http {
            status: status.as_u16(),
            retry_after,
        })
    }
}

/// Statuses the OTLP specification lists as transient.
pub fn is_retryable(status: u16) -> bool {
    matches!(
        StatusCode::from_u16(status),
        Ok(StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_follow_the_otlp_spec() {
        for status in [429, 502, 503, 504] {
            assert!(is_retryable(status), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 500, 501] {
            assert!(!is_retryable(status), "{status}");
        }
    }
}
