//! Server TLS on rustls with the ring provider (the process's one crypto stack), with
//! optional client-certificate authentication and hot reload.
//!
//! The listener *asks for* but does not require a client certificate: a certificate that
//! is presented must chain to one of the configured `[[client_ca]]` bundles, be inside its
//! validity window and carry the client-auth usage when it has an EKU (rustls-webpki), or
//! the handshake fails with an alert. After the handshake, [`TlsMaterial::client_cert`]
//! finds which configured CA issued the chain (to enforce its SPIFFE trust domain) and
//! reads the leaf's names.
//!
//! [`TlsReloader`] rebuilds the whole material when any of its files change; a broken
//! file keeps the previous material live. New connections use the new material at once.
//!
//! A refused certificate never reaches the application, so the verifier notes the
//! presented leaf's SHA-256 in [`PRESENTED_CERT`], a task-local the accept task scopes
//! around its handshake; the refusal's audit record then names the certificate.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::authn::mtls::PeerCert;
use crate::config::ClientCa;

/// What the TLS material is built from.
#[derive(Debug, Clone)]
pub struct TlsSpec {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Trusted client CAs (empty: no client authentication).
    pub client_cas: Vec<ClientCa>,
}

impl TlsSpec {
    fn files(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_cas.iter().map(|c| c.bundle.as_path()));
        v
    }
}

tokio::task_local! {
    /// The SHA-256 (hex) of the client certificate presented in the handshake being run
    /// by this task, set by the verifier whether it accepts the certificate or not.
    pub static PRESENTED_CERT: RefCell<Option<String>>;
}

/// Delegates to the real client-certificate verifier, noting the presented leaf's
/// fingerprint in [`PRESENTED_CERT`] first (when the accept task has scoped it).
#[derive(Debug)]
struct NotingVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for NotingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let _ = PRESENTED_CERT.try_with(|c| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
            *c.borrow_mut() = Some(crate::hex::to_hex(digest.as_ref()));
        });
        self.0.verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One built TLS configuration.
pub struct TlsMaterial {
    acceptor: tokio_rustls::TlsAcceptor,
    per_ca: Vec<(ClientCa, Arc<dyn ClientCertVerifier>)>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field(
                "client_cas",
                &self.per_ca.iter().map(|(c, _)| &c.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

fn roots(ca: &ClientCa) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in load_certs(&ca.bundle, &format!("client_ca {:?} bundle", ca.name))? {
        store.add(c).map_err(|e| {
            format!(
                "client_ca {:?} bundle {}: {e}",
                ca.name,
                ca.bundle.display()
            )
        })?;
    }
    Ok(store)
}

impl TlsMaterial {
    /// Builds the material from files (TLS 1.3 and 1.2, ALPN h2 and http/1.1).
    pub fn load(spec: &TlsSpec) -> Result<Self, String> {
        let certs = load_certs(&spec.cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(&spec.key)
            .map_err(|e| format!("private key {}: {e}", spec.key.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut per_ca = Vec::new();
        let builder = if spec.client_cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut all = RootCertStore::empty();
            for ca in &spec.client_cas {
                let r = roots(ca)?;
                all.roots.extend(r.roots.iter().cloned());
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(r), provider())
                    .build()
                    .map_err(|e| format!("client_ca {:?}: {e}", ca.name))?;
                per_ca.push((ca.clone(), v));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(all), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CAs: {e}"))?;
            builder.with_client_cert_verifier(Arc::new(NotingVerifier(verifier)))
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            per_ca,
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads a verified client chain: which configured CA issued it, and the leaf's names.
    pub fn client_cert(&self, chain: &[CertificateDer<'_>]) -> Result<PeerCert, String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("empty client certificate chain".into());
        };
        let now = UnixTime::now();
        let ca = self
            .per_ca
            .iter()
            .find(|(_, v)| v.verify_client_cert(leaf, intermediates, now).is_ok())
            .map(|(ca, _)| ca);
        PeerCert::from_der(
            leaf.as_ref(),
            ca.map(|c| c.name.clone()),
            ca.and_then(|c| c.trust_domain.clone()),
        )
    }
}

/// The live TLS material and its reload.
#[derive(Debug)]
pub struct TlsReloader {
    spec: TlsSpec,
    current: RwLock<Arc<TlsMaterial>>,
    seen: Mutex<Vec<(PathBuf, Option<SystemTime>, u64)>>,
}

fn fingerprint(spec: &TlsSpec) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    spec.files()
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(p).ok();
            (
                p.to_path_buf(),
                md.as_ref().and_then(|m| m.modified().ok()),
                md.map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

impl TlsReloader {
    /// Loads the material; fails if any file is invalid.
    pub fn new(spec: TlsSpec) -> Result<Self, String> {
        let seen = fingerprint(&spec);
        let material = TlsMaterial::load(&spec)?;
        Ok(Self {
            spec,
            current: RwLock::new(Arc::new(material)),
            seen: Mutex::new(seen),
        })
    }

    /// The live material.
    pub fn current(&self) -> Arc<TlsMaterial> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// True when any file changed since the last check.
    pub fn changed_on_disk(&self) -> bool {
        let now = fingerprint(&self.spec);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen != now {
            *seen = now;
            true
        } else {
            false
        }
    }

    /// Rebuilds the material; swaps it in only if every file is valid.
    pub fn reload(&self) -> Result<(), String> {
        let material = TlsMaterial::load(&self.spec)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
        Ok(())
    }

    /// The files watched.
    pub fn files(&self) -> Vec<String> {
        self.spec
            .files()
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    }
}
