//! Certificates for the TLS tests, made fresh for each test: a CA, a server certificate it
//! signed for `localhost` and 127.0.0.1, and a client certificate it signed.

use std::{fs, path::PathBuf};

use loupe_integration_tests::otlp_receiver::ReceiverTls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::scratch_dir;

/// PEM files on disk for the agent, and what the receiver presents.
pub struct TlsFiles {
    pub dir: PathBuf,
    /// The CA that signed both certificates.
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    /// A CA that signed nothing here: trusting it alone verifies no one.
    pub other_ca: String,
    pub server: ReceiverTls,
    /// A certificate the same CA signed for another host name: valid, but not the
    /// endpoint's.
    pub misnamed_server: ReceiverTls,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

fn signed(names: &[&str], issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .expect("params")
        .signed_by(&key, issuer)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// Fresh certificates; with `client_auth`, the receiver demands a client certificate
/// signed by the CA.
pub fn tls_files(client_auth: bool) -> TlsFiles {
    let dir = scratch_dir("tls");
    let (ca_pem, issuer) = ca("loupe test CA");
    let (other_pem, _) = ca("loupe unrelated CA");
    let (server_cert, server_key) = signed(&["localhost", "127.0.0.1"], &issuer);
    let (client_cert, client_key) = signed(&["loupe-agent"], &issuer);
    let (misnamed_cert, misnamed_key) = signed(&["collector.elsewhere.example"], &issuer);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        fs::write(&path, pem).expect("write PEM");
        path.to_str().expect("UTF-8 path").to_owned()
    };
    TlsFiles {
        ca: write("ca.pem", &ca_pem),
        other_ca: write("other-ca.pem", &other_pem),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
        server: ReceiverTls {
            cert_pem: server_cert.into_bytes(),
            key_pem: server_key.into_bytes(),
            client_ca_pem: client_auth.then(|| ca_pem.clone().into_bytes()),
        },
        misnamed_server: ReceiverTls {
            cert_pem: misnamed_cert.into_bytes(),
            key_pem: misnamed_key.into_bytes(),
            client_ca_pem: None,
        },
        dir,
    }
}
