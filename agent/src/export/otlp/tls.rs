//! TLS to `https://` collectors. The collector's certificate is checked against the host's
//! trust store and the CA file configured (`OTEL_EXPORTER_OTLP_CERTIFICATE`); a client
//! certificate is presented when one is configured. rustls with the ring provider, for
//! both transports: tonic's own configuration for gRPC, and a rustls client configuration
//! for HTTP.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::export::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the TLS configuration was refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
}

/// tonic's TLS settings for a gRPC channel.
pub fn grpc(tls: &TlsConfig) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(Certificate::from_pem(&ca.pem));
    }
    if let Some(client) = &tls.client {
        config = config.identity(Identity::from_pem(&client.cert.pem, &client.key.pem));
    }
    config
}

/// A rustls client configuration for HTTP.
pub fn http(tls: &TlsConfig) -> Result<ClientConfig, TlsSetupError> {
    // Deprecated for lacking post-quantum key exchange. The provider that has it
    // (aws-lc-rs) needs cmake and a C++ toolchain to build; tonic's gRPC TLS uses ring too.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(tls)?);
    let config = match &tls.client {
        Some(client) => {
            let chain = certificates(&client.cert.path, &client.cert.pem)?;
            let key = PrivateKeyDer::from_pem_slice(&client.key.pem).map_err(|_| {
                TlsSetupError::File {
                    path: client.key.path.clone(),
                    problem: "holds no PEM private key".to_owned(),
                }
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    // The connector offers HTTP/1.1 by ALPN itself (`enable_http1`).
    Ok(config)
}

/// The host's trusted CAs and the configured one. Certificates of the host's store that do
/// not parse are skipped, as every TLS client does.
fn roots(tls: &TlsConfig) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = &tls.ca {
        for cert in certificates(&ca.path, &ca.pem)? {
            roots.add(cert)?;
        }
    }
    if roots.is_empty() {
        log::warn!(
            "no trusted CA certificates: the host's store is empty or unreadable ({} errors) \
             and OTEL_EXPORTER_OTLP_CERTIFICATE is not set; exports over TLS will fail",
            native.errors.len()
        );
    } else {
        log::debug!("TLS: {added} CA certificates from the host's store");
    }
    Ok(roots)
}

fn certificates(path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::File {
            path: path.to_owned(),
            problem: format!("is not valid PEM: {e}"),
        })
}
