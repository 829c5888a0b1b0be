//! TLS settings for `https://` collectors: a CA to trust besides the host's trust store,
//! and a client certificate for collectors that ask for one. The files are read and checked
//! when the configuration is, so a missing or malformed one fails at startup (and in `loupe
//! config check`), not at the first export.

use std::sync::Arc;

use rustls::{RootCertStore, crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{Env, ExportConfigError, SignalVars};

/// The cryptography behind every TLS connection loupe makes: ring. rustls deprecates it for
/// lacking post-quantum key exchange; the provider that has it (aws-lc-rs) needs cmake and
/// a C++ toolchain to build, and tonic's gRPC TLS uses ring too.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

pub const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
pub const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificates of CAs trusted for the collector's certificate, besides the host's.
    pub ca: Option<PemFile>,
    pub client: Option<ClientIdentity>,
}

impl TlsConfig {
    /// Whether any TLS file is configured.
    pub fn has_files(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// A client certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PemFile,
    pub key: PemFile,
}

/// A file's path and its PEM text, checked to hold what its variable names.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: String,
    pub pem: Vec<u8>,
}

impl PemFile {
    /// The certificates in the file (checked when it was read to hold only well-formed ones).
    pub fn certificates(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(&self.pem)
            .flatten()
            .collect()
    }

    /// The private key in the file; `None` when it holds none.
    pub fn private_key(&self) -> Option<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.pem).ok()
    }
}

/// Only the path: key material stays out of logs and debug output.
impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PemFile").field(&self.path).finish()
    }
}

/// The TLS files of one signal; the signal's own variables win over the generic ones.
pub fn parse<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    signal: &SignalVars,
) -> Result<TlsConfig, ExportConfigError> {
    let ca = match env.either(signal.certificate, CERTIFICATE) {
        Some((var, path)) => {
            let file = read_certificates(var, path)?;
            check_trust_anchors(var, &file)?;
            Some(file)
        }
        None => None,
    };
    let cert = env.either(signal.client_certificate, CLIENT_CERTIFICATE);
    let key = env.either(signal.client_key, CLIENT_KEY);
    let client = match (cert, key) {
        (Some((cert_var, cert_path)), Some((key_var, key_path))) => {
            let cert = read_certificates(cert_var, cert_path)?;
            let key = read_key(key_var, key_path)?;
            check_pair(key_var, &cert, &key)?;
            Some(ClientIdentity { cert, key })
        }
        (Some((given, _)), None) => {
            return Err(ExportConfigError::TlsClientHalf {
                given,
                missing: CLIENT_KEY,
                missing_for_signal: signal.client_key,
            });
        }
        (None, Some((given, _))) => {
            return Err(ExportConfigError::TlsClientHalf {
                given,
                missing: CLIENT_CERTIFICATE,
                missing_for_signal: signal.client_certificate,
            });
        }
        (None, None) => None,
    };
    Ok(TlsConfig { ca, client })
}

fn read(var: &'static str, path: &str) -> Result<Vec<u8>, ExportConfigError> {
    std::fs::read(path).map_err(|e| ExportConfigError::TlsFile {
        var,
        path: path.to_owned(),
        problem: format!("cannot be read: {e}"),
    })
}

fn problem(var: &'static str, path: &str, problem: &str) -> ExportConfigError {
    ExportConfigError::TlsFile {
        var,
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}

/// The file's bytes when it holds at least one PEM certificate and nothing malformed.
fn read_certificates(var: &'static str, path: String) -> Result<PemFile, ExportConfigError> {
    let pem = read(var, &path)?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| problem(var, &path, &format!("is not valid PEM: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(problem(
            var,
            &path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(PemFile { path, pem })
}

/// Each certificate of a CA file must be one a TLS client can trust: parseable X.509.
fn check_trust_anchors(var: &'static str, file: &PemFile) -> Result<(), ExportConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in file.certificates() {
        roots.add(cert).map_err(|e| {
            problem(
                var,
                &file.path,
                &format!("holds a certificate that does not parse: {e}"),
            )
        })?;
    }
    Ok(())
}

/// The key must be one loupe can sign with and belong to the certificate.
fn check_pair(
    key_var: &'static str,
    cert: &PemFile,
    key: &PemFile,
) -> Result<(), ExportConfigError> {
    let der = key
        .private_key()
        .ok_or_else(|| problem(key_var, &key.path, "holds no PEM private key"))?;
    // rustls's errors name the mismatch or the key type, never the key's bytes.
    CertifiedKey::from_der(cert.certificates(), der, &crypto_provider()).map_err(|e| {
        problem(
            key_var,
            &key.path,
            &format!(
                "is not a usable key for the certificate in {}: {e}",
                cert.path
            ),
        )
    })?;
    Ok(())
}

/// The file's bytes when it holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
fn read_key(var: &'static str, path: String) -> Result<PemFile, ExportConfigError> {
    let file = PemFile {
        pem: read(var, &path)?,
        path,
    };
    // The parse error is left out: it could quote part of the key.
    match file.private_key() {
        Some(_) => Ok(file),
        None => Err(problem(var, &file.path, "holds no PEM private key")),
    }
}
