//! TLS for drs over TCP, with rustls (no OpenSSL); drs-transport-ws uses
//! the same settings for `wss://`.
//!
//! - [`ServerTls`]: a certificate chain and key (PEM, from files or
//!   memory), and optionally the CA whose client certificates are required
//!   (mutual TLS). [`TlsListener`] accepts with it; the handshake runs on
//!   the new connection's task, bounded by the server's handshake timeout,
//!   so a slow or plaintext peer holds up no one.
//! - [`ClientTls`]: the CAs to trust (PEM; or the Mozilla roots with the
//!   `webpki-roots` feature) and optionally a client certificate.
//!   [`TlsDialer`] connects with it, checking the server's name.
//! - The peer's verified certificate (subject, common name, SANs) is in
//!   [`ConnInfo::peer_certificate`](drs_core::ConnInfo): connect hooks,
//!   authenticators (as `drs_auth::CredentialSource::Certificate`)
//!   and handlers (`msg.conn().info()`) read it.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use drs_tls::{ClientTls, ServerTls, TlsDialer, TlsListener};
//! let tls = ServerTls::from_pem_files("server.pem", "server.key")?.build()?;
//! let server = drs_core::Server::new();
//! let addr = server.listen(TlsListener::bind("127.0.0.1:4443", tls).await?, drs_protocol_json::Json)?;
//!
//! let trust = ClientTls::builder().trust_pem_file("ca.pem")?.build()?;
//! let conn = drs_core::Client::new()
//!     .connect(TlsDialer::new(&addr, trust).server_name("localhost"), drs_protocol_json::Json)
//!     .await
//!     .map_err(std::io::Error::other)?;
//! # Ok(()) }
//! ```

use std::{future::Future, io, net::SocketAddr, path::Path, pin::Pin, sync::Arc};

use drs_core::{ConnInfo, Dialer, FrameSpec, FramedIo, Listener, PeerCertificate};
use drs_transport_tcp::{configure, conn_info, Keepalive, TcpListener};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    RootCertStore,
};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use rustls;
pub use tokio_rustls;

#[cfg(feature = "test-pki")]
pub mod test_pki;

/// The crypto provider: *ring*, which builds with a C compiler alone.
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange;
/// aws-lc-rs has it, at the cost of a heavier native build.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// Every certificate in a PEM text; at least one.
fn certs_from_pem(pem: &[u8], what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(format!("{what}: no certificate in the PEM")));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], what: &str) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid(format!("{what}: {e}")))
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn roots_from_pem(pem: &[u8], what: &str) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("{what}: {e}")))?;
    }
    Ok(roots)
}

/// A server's TLS settings. Build one with [`ServerTls::from_pem`] or
/// [`ServerTls::from_pem_files`], or wrap a `rustls::ServerConfig` of your
/// own with [`ServerTls::from_config`].
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Builds a [`ServerTls`].
pub struct ServerTlsBuilder {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<RootCertStore>,
}

impl std::fmt::Debug for ServerTlsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsBuilder")
            .field("chain", &self.chain.len())
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The server's certificate chain (leaf first) and private key, PEM.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> io::Result<ServerTlsBuilder> {
        Ok(ServerTlsBuilder {
            chain: certs_from_pem(chain, "the certificate chain")?,
            key: key_from_pem(key, "the private key")?,
            client_ca: None,
        })
    }

    /// [`from_pem`](Self::from_pem), reading the two files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> io::Result<ServerTlsBuilder> {
        Self::from_pem(&read(chain.as_ref())?, &read(key.as_ref())?)
    }

    /// Settings of your own.
    pub fn from_config(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            acceptor: TlsAcceptor::from(config),
        }
    }

    /// The server settings a listening URL asks for: its certificate
    /// chain `?cert=FILE` and key `?key=FILE` (PEM), and, for mutual TLS,
    /// the CA its clients' certificates must chain to, `?client_ca=FILE`.
    pub fn for_url(url: &drs_core::Url) -> io::Result<ServerTls> {
        let (Some(cert), Some(key)) = (url.param("cert"), url.param("key")) else {
            return Err(invalid(format!(
                "{}:// listeners need certificates: add ?cert=FILE&key=FILE (PEM), or bind a TlsListener (or a WsListener with .tls(…)) with a ServerTls",
                url.scheme
            )));
        };
        let mut builder = ServerTls::from_pem_files(cert, key)?;
        if let Some(ca) = url.param("client_ca") {
            builder = builder.require_client_cert_file(ca)?;
        }
        builder.build()
    }
}

impl ServerTls {
    /// Runs the server side of a handshake on `stream` (any byte stream:
    /// TCP here, under WebSocket in drs-transport-ws); returns the TLS
    /// stream and the client's verified certificate, if it gave one.
    pub async fn accept<S>(
        &self,
        stream: S,
    ) -> io::Result<(tokio_rustls::server::TlsStream<S>, Option<PeerCertificate>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let tls = self
            .acceptor
            .accept(stream)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        let cert = peer_identity(tls.get_ref().1.peer_certificates());
        Ok((tls, cert))
    }
}

impl ServerTlsBuilder {
    /// Requires a client certificate signed by one of the CAs in `pem`
    /// (mutual TLS); a client without one fails the handshake.
    pub fn require_client_cert(mut self, ca_pem: &[u8]) -> io::Result<Self> {
        self.client_ca = Some(roots_from_pem(ca_pem, "the client CA")?);
        Ok(self)
    }

    /// [`require_client_cert`](Self::require_client_cert), reading the file.
    pub fn require_client_cert_file(self, ca: impl AsRef<Path>) -> io::Result<Self> {
        let pem = read(ca.as_ref())?;
        self.require_client_cert(&pem)
    }

    /// The settings; fails when the key does not suit the certificate.
    pub fn build(self) -> io::Result<ServerTls> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let builder = match self.client_ca {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(invalid)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(self.chain, self.key)
            .map_err(|e| invalid(format!("the certificate and key: {e}")))?;
        Ok(ServerTls::from_config(Arc::new(config)))
    }
}

/// A client's TLS settings: [`ClientTls::builder`], or
/// [`ClientTls::from_config`].
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// Builds a [`ClientTls`].
pub struct ClientTlsBuilder {
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl std::fmt::Debug for ClientTlsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsBuilder")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Settings that trust nothing yet: add CAs.
    pub fn builder() -> ClientTlsBuilder {
        ClientTlsBuilder {
            roots: RootCertStore::empty(),
            identity: None,
        }
    }

    /// Settings of your own.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            connector: TlsConnector::from(config),
        }
    }
}

impl ClientTls {
    /// Runs the client side of a handshake on `stream`, checking the
    /// server's certificate for `name`; returns the TLS stream and the
    /// server's certificate.
    pub async fn connect<S>(
        &self,
        name: &str,
        stream: S,
    ) -> io::Result<(tokio_rustls::client::TlsStream<S>, Option<PeerCertificate>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| invalid(format!("server name {name:?}: {e}")))?;
        let tls = self
            .connector
            .connect(server_name, stream)
            .await
            .map_err(|e| {
                io::Error::new(e.kind(), format!("TLS handshake with {name} failed: {e}"))
            })?;
        let cert = peer_identity(tls.get_ref().1.peer_certificates());
        Ok((tls, cert))
    }
}

impl ClientTlsBuilder {
    /// Trusts the CAs in `pem`.
    pub fn trust_pem(mut self, pem: &[u8]) -> io::Result<Self> {
        for cert in certs_from_pem(pem, "the CA")? {
            self.roots
                .add(cert)
                .map_err(|e| invalid(format!("the CA: {e}")))?;
        }
        Ok(self)
    }

    /// [`trust_pem`](Self::trust_pem), reading the file.
    pub fn trust_pem_file(self, path: impl AsRef<Path>) -> io::Result<Self> {
        let pem = read(path.as_ref())?;
        self.trust_pem(&pem)
    }

    /// Trusts the Mozilla root CAs (what browsers trust).
    #[cfg(feature = "webpki-roots")]
    pub fn trust_webpki_roots(mut self) -> Self {
        self.roots
            .extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        self
    }

    /// Presents this certificate chain and key to servers that ask
    /// (mutual TLS).
    pub fn client_cert_pem(mut self, chain: &[u8], key: &[u8]) -> io::Result<Self> {
        self.identity = Some((
            certs_from_pem(chain, "the client certificate")?,
            key_from_pem(key, "the client key")?,
        ));
        Ok(self)
    }

    /// [`client_cert_pem`](Self::client_cert_pem), reading the files.
    pub fn client_cert_files(
        self,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> io::Result<Self> {
        let (chain, key) = (read(chain.as_ref())?, read(key.as_ref())?);
        self.client_cert_pem(&chain, &key)
    }

    /// The settings; fails when nothing is trusted.
    pub fn build(self) -> io::Result<ClientTls> {
        if self.roots.is_empty() {
            return Err(invalid(
                "no CA to trust: add one (trust_pem) or the platform roots",
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(self.roots);
        let config = match self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("the client certificate and key: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls::from_config(Arc::new(config)))
    }
}

/// The identity of the first (the peer's own) certificate of a chain.
fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Option<PeerCertificate> {
    chain.and_then(|c| c.first()).map(identity)
}

/// What is known of a verified peer certificate.
fn identity(der: &CertificateDer<'_>) -> PeerCertificate {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()) else {
        return PeerCertificate::new("", None, Vec::new(), der.to_vec());
    };
    let subject = cert.subject().to_string();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => {
                    sans.push((*n).to_string())
                }
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => sans.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => sans.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    PeerCertificate::new(subject, common_name, sans, der.to_vec())
}

/// The TLS stream a [`TlsListener`] serves.
pub type ServerTlsTransport = FramedIo<tokio_rustls::server::TlsStream<TcpStream>>;
/// The TLS stream a [`TlsDialer`] opens.
pub type ClientTlsTransport = FramedIo<tokio_rustls::client::TlsStream<TcpStream>>;

fn info(stream: &TcpStream) -> ConnInfo {
    conn_info("tls", stream)
}

/// Accepts TLS connections over TCP for a [`drs_core::Server`]; the
/// transport's name in [`ConnInfo`] is `"tls"`.
/// It is a [`TcpListener`] (binding, keepalive, accepting) with a
/// handshake after each accept.
pub struct TlsListener {
    tcp: TcpListener,
    tls: ServerTls,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.tcp.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Binds to `addr` (port 0 picks a free port).
    pub async fn bind(addr: impl ToSocketAddrs, tls: ServerTls) -> io::Result<Self> {
        Ok(Self::over(TcpListener::bind(addr).await?, tls))
    }

    /// Wraps a bound Tokio listener.
    pub fn from_tokio(inner: tokio::net::TcpListener, tls: ServerTls) -> Self {
        Self::over(TcpListener::from_tokio(inner), tls)
    }

    /// TLS over the connections `tcp` accepts (its keepalive settings
    /// included).
    pub fn over(tcp: TcpListener, tls: ServerTls) -> Self {
        Self { tcp, tls }
    }

    /// Sets TCP keepalive for accepted sockets (`None`: off).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.tcp = self.tcp.keepalive(keepalive);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

type Handshake<T> = Pin<Box<dyn Future<Output = io::Result<(T, ConnInfo)>> + Send>>;

impl Listener for TlsListener {
    type Io = ServerTlsTransport;
    type Handshake = Handshake<ServerTlsTransport>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let stream = self.tcp.accept_stream().await?;
        let tls = self.tls.clone();
        Ok(Box::pin(async move {
            let mut info = info(&stream);
            let (tls, cert) = tls.accept(stream).await?;
            if let Some(cert) = cert {
                info = info.with_peer_certificate(cert);
            }
            Ok((FramedIo::new(tls, spec), info))
        }))
    }

    fn local_addr(&self) -> io::Result<String> {
        self.tcp.local_addr().map(|a| a.to_string())
    }
}

/// Dials a drs server over TLS: `host:port`, checking the certificate
/// against [`ClientTls`]'s CAs and the host name (or the name given with
/// [`server_name`](TlsDialer::server_name)).
#[derive(Debug, Clone)]
pub struct TlsDialer {
    addr: String,
    name: Option<String>,
    tls: ClientTls,
    keepalive: Option<Keepalive>,
}

impl TlsDialer {
    /// A dialer for `addr` (`host:port`, or `tls://host:port`).
    pub fn new(addr: impl AsRef<str>, tls: ClientTls) -> Self {
        let addr = addr.as_ref();
        Self {
            addr: addr.strip_prefix("tls://").unwrap_or(addr).to_string(),
            name: None,
            tls,
            keepalive: Some(Keepalive::default()),
        }
    }

    /// The name the server's certificate must have (default: the host
    /// part of the address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets TCP keepalive (`None`: off).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    fn host(&self) -> &str {
        let addr = self.addr.as_str();
        match addr.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => addr.rsplit_once(':').map_or(addr, |(host, _)| host),
        }
    }
}

impl Dialer for TlsDialer {
    type Io = ClientTlsTransport;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(ClientTlsTransport, ConnInfo)> {
        let name = self
            .name
            .as_deref()
            .unwrap_or_else(|| self.host())
            .to_string();
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| invalid(format!("server name {name:?}: {e}")))?;
        let stream = TcpStream::connect(&self.addr).await?;
        configure(&stream, self.keepalive.as_ref())?;
        let mut info = info(&stream);
        let tls = self
            .tls
            .connector
            .connect(server_name, stream)
            .await
            .map_err(|e| {
                io::Error::new(e.kind(), format!("TLS handshake with {name} failed: {e}"))
            })?;
        if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            info = info.with_peer_certificate(identity(cert));
        }
        Ok((FramedIo::new(tls, spec), info))
    }
}

impl ClientTls {
    /// The client settings a URL asks for: the CAs of `?ca=FILE`, else the
    /// Mozilla roots (feature `webpki-roots`).
    pub fn for_url(url: &drs_core::Url) -> io::Result<ClientTls> {
        let builder = ClientTls::builder();
        let builder = match url.param("ca") {
            Some(file) => builder.trust_pem_file(file)?,
            #[cfg(feature = "webpki-roots")]
            None => builder.trust_webpki_roots(),
            #[cfg(not(feature = "webpki-roots"))]
            None => {
                return Err(invalid(format!(
                    "{}://{} trusts no CA: add ?ca=FILE (or the webpki-roots feature of drs-tls)",
                    url.scheme, url.target
                )))
            }
        };
        builder.build()
    }
}

/// `tls://HOST:PORT` for a [`Registry`](drs_core::Registry): it dials
/// trusting `?ca=FILE` ([`ClientTls::for_url`]), and listens with the
/// certificates of `?cert=FILE&key=FILE` (and `&client_ca=FILE` for mutual
/// TLS; [`ServerTls::for_url`]). The URL it answers carries none of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsScheme;

impl drs_core::Scheme for TlsScheme {
    fn names(&self) -> &'static [&'static str] {
        &["tls"]
    }

    fn dial<'a>(
        &'a self,
        client: drs_core::Client,
        url: &'a drs_core::Url,
        protocol: Arc<dyn drs_core::Protocol>,
    ) -> drs_core::SchemeFuture<'a, drs_core::Conn> {
        Box::pin(async move {
            let dialer = TlsDialer::new(&url.target, ClientTls::for_url(url)?);
            client.connect(dialer, protocol).await
        })
    }

    fn listen<'a>(
        &'a self,
        server: &'a drs_core::Server,
        url: &'a drs_core::Url,
        protocol: Arc<dyn drs_core::Protocol>,
    ) -> drs_core::SchemeFuture<'a, String> {
        let bind = async move { TlsListener::bind(&url.target, ServerTls::for_url(url)?).await };
        drs_core::listen_bound(server, "tls", bind, protocol)
    }

    fn open<'a>(
        &'a self,
        url: &'a drs_core::Url,
        spec: drs_core::FrameSpec,
    ) -> drs_core::SchemeFuture<'a, (Box<dyn drs_core::Transport>, drs_core::ConnInfo)> {
        Box::pin(async move {
            let dialer = TlsDialer::new(&url.target, ClientTls::for_url(url)?);
            drs_core::open_dialed(dialer, spec).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address() {
        let tls = ClientTls::from_config(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        ));
        assert_eq!(
            TlsDialer::new("localhost:1", tls.clone()).host(),
            "localhost"
        );
        assert_eq!(TlsDialer::new("tls://a.b:443", tls.clone()).host(), "a.b");
        assert_eq!(TlsDialer::new("[::1]:443", tls).host(), "::1");
    }

    #[cfg(feature = "webpki-roots")]
    #[test]
    fn the_mozilla_roots_can_be_trusted() {
        let builder = ClientTls::builder().trust_webpki_roots();
        assert!(builder.roots.len() > 50, "{}", builder.roots.len());
        builder.build().expect("settings");
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let e = ServerTls::from_pem(b"not pem", b"").unwrap_err();
        assert!(e.to_string().contains("the certificate chain"), "{e}");
        let e = ClientTls::builder().build().unwrap_err();
        assert!(e.to_string().contains("no CA to trust"), "{e}");
        let e = ClientTls::builder().trust_pem(b"").unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e =
            ServerTls::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }
}
