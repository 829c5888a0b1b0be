//! TLS to `https://` collectors. The collector's certificate is checked against the host's
//! trust store and the CA file configured (`OTEL_EXPORTER_OTLP_CERTIFICATE`); a client
//! certificate is presented when one is configured. rustls with the ring provider, for
//! both transports: tonic's own configuration for gRPC, and a rustls client configuration
//! for HTTP.

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::export::config::{TlsConfig, crypto_provider};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the TLS configuration was refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}: holds no PEM private key")]
    NoKey(String),
}

/// tonic's TLS settings for a gRPC channel. tonic refuses to connect at all when asked
/// for the host's trust store and finding none, so it is asked only when there is one.
pub fn grpc(tls: &TlsConfig) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new();
    if !native_roots(tls).is_empty() {
        config = config.with_native_roots();
    }
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
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(tls)?);
    let config = match &tls.client {
        Some(client) => {
            let key = client
                .key
                .private_key()
                .ok_or_else(|| TlsSetupError::NoKey(client.key.path.clone()))?;
            builder.with_client_auth_cert(client.cert.certificates(), key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The host's trusted CAs and the configured one. Certificates of the host's store that do
/// not parse are skipped, as every TLS client does.
fn roots(tls: &TlsConfig) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(native_roots(tls));
    if let Some(ca) = &tls.ca {
        for cert in ca.certificates() {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// The host's trust store (`/etc/ssl/certs` and the like, or `SSL_CERT_FILE`), with a
/// warning when it is empty and no CA file makes up for it.
fn native_roots(tls: &TlsConfig) -> Vec<CertificateDer<'static>> {
    let native = rustls_native_certs::load_native_certs();
    if native.certs.is_empty() && tls.ca.is_none() {
        log::warn!(
            "no trusted CA certificates: the host's trust store is empty or unreadable \
             ({} errors; install ca-certificates) and no CA file is configured \
             (OTEL_EXPORTER_OTLP_CERTIFICATE or export.certificate); exports over TLS will \
             fail",
            native.errors.len()
        );
    }
    native.certs
}
