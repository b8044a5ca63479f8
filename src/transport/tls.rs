//! TLS contexts (rustls, ring provider): the server side of the `[tls]`
//! listener and the client side of connections sipshard opens to `sips:` /
//! `transport=tls` destinations. TLS 1.2 and 1.3 only (rustls speaks
//! nothing older). Certificates are read from PEM files at start and again
//! on each script reload ([`TlsContext::reload`]); connections already up
//! keep the context they started with.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// What `[tls]` names.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CA certificates (PEM) for client certificates and, with
    /// `verify_server`, for servers we connect to.
    pub ca_list: Option<PathBuf>,
    /// Ask for and check a client certificate (Kamailio `verify_certificate`
    /// + `require_certificate`).
    pub require_client_cert: bool,
    /// Check the certificate of servers we connect to against `ca_list`.
    pub verify_server: bool,
}

/// The current server and client configurations.
pub struct TlsContext {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Arc<ClientConfig>)>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl TlsContext {
    pub fn load(files: TlsFiles) -> Result<TlsContext, String> {
        let pair = build(&files)?;
        Ok(TlsContext {
            files,
            current: RwLock::new(pair),
        })
    }

    /// Reads the files again; on error the old contexts stay.
    pub fn reload(&self) -> Result<(), String> {
        let pair = build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(())
    }

    pub fn server(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    pub fn client(&self) -> Arc<ClientConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// A server session for an accepted connection.
    pub fn accept(&self) -> Result<rustls::Connection, String> {
        rustls::ServerConnection::new(self.server())
            .map(rustls::Connection::Server)
            .map_err(|e| e.to_string())
    }

    /// A client session to `ip`.
    pub fn connect(&self, ip: IpAddr) -> Result<rustls::Connection, String> {
        rustls::ClientConnection::new(self.client(), ServerName::IpAddress(ip.into()))
            .map(rustls::Connection::Client)
            .map_err(|e| e.to_string())
    }
}

/// A client configuration that does not check the server's certificate
/// (the load generator's, against a test server).
pub fn insecure_client_config() -> Result<Arc<ClientConfig>, String> {
    let p = provider();
    let cfg = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoServerCheck(p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn read_certs(p: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", p.display()));
    }
    Ok(certs)
}

fn build(f: &TlsFiles) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), String> {
    let certs = read_certs(&f.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&f.private_key)
        .map_err(|e| format!("{}: {e}", f.private_key.display()))?;
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &f.ca_list {
        for c in read_certs(ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let roots = Arc::new(roots);
    let p = provider();
    let builder = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = if f.require_client_cert {
        if roots.is_empty() {
            return Err("[tls] require_certificate needs ca_list".into());
        }
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
                .build()
                .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let server = builder
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| format!("{}: {e}", f.certificate.display()))?;
    let cb = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let client = if f.verify_server {
        cb.with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?
    } else {
        cb.dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerCheck(p)))
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?
    };
    Ok((Arc::new(server), Arc::new(client)))
}

/// Kamailio's default for outgoing TLS (`verify_certificate = no`): the
/// server's certificate chain is not checked, its handshake signatures are.
#[derive(Debug)]
struct NoServerCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
