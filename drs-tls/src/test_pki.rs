//! Certificates made on the spot, for tests, benchmarks and demos (feature
//! `test-pki`): a CA, and certificates it signs for servers and clients.
//! Never for production: the keys live in memory and nobody vouches for
//! the CA.
//!
//! ```
//! use drs_tls::test_pki::{TestCa, Usage};
//! let ca = TestCa::new("demo CA");
//! let server = ca.server_tls(&["localhost"]).build().unwrap();
//! let client = ca.trusting().build().unwrap();
//! let (cert_pem, key_pem) = ca.issue("alice", &[], Usage::Client, false);
//! # let _ = (server, client, cert_pem, key_pem);
//! ```

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

use crate::{ClientTls, ClientTlsBuilder, ServerTls, ServerTlsBuilder};

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's certificate.
    Server,
    /// A client's certificate (mutual TLS).
    Client,
}

/// A certificate authority made on the spot.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A CA whose common name is `name`.
    ///
    /// # Panics
    /// If the key or certificate cannot be made (never, with *ring*).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("the CA certificate"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate (PEM) and its key (PEM) for the subject alternative
    /// `names` (DNS names or IP addresses), with common name `cn`; long
    /// expired when `expired`.
    ///
    /// # Panics
    /// If a name is not a valid SAN.
    pub fn issue(&self, cn: &str, names: &[&str], usage: Usage, expired: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        // A name of its own: OpenSSL takes a certificate named like its
        // issuer for a self-signed one.
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Server settings with a certificate for `names` from this CA.
    pub fn server_tls(&self, names: &[&str]) -> ServerTlsBuilder {
        let (cert, key) = self.issue(
            names.first().copied().unwrap_or("server"),
            names,
            Usage::Server,
            false,
        );
        ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).expect("a valid PEM")
    }

    /// Client settings that trust this CA.
    pub fn trusting(&self) -> ClientTlsBuilder {
        ClientTls::builder()
            .trust_pem(self.pem().as_bytes())
            .expect("a valid PEM")
    }
}
