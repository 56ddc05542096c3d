//! TLS for the drivers: the core sees plaintext streams and only knows which listener a
//! connection came on (docs/design.md, "TLS"). This module builds the rustls server
//! configuration both drivers use, from certificate/key pairs chosen by SNI and an optional
//! client-certificate CA, rebuilds it on reload (new handshakes get the new one, established
//! connections keep theirs), and keeps the handshake counters `/metrics` shows.
//!
//! TLS 1.2 and 1.3 only, with rustls' default cipher suites, on the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::InvalidSetting;

/// A handshake not finished within this is abandoned (a client that stalls holds a socket and
/// a TLS state otherwise).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; more are refused at accept (a flood of ClientHellos costs
/// a key exchange each).
pub const HANDSHAKES_MAX: usize = 512;

/// What the operator configured for TLS listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chains and their keys; the first is served when no SNI name matches.
    pub certs: Vec<CertPair>,
    /// CA bundle that client certificates must chain to; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// With a CA: whether a client without a certificate is refused.
    pub client_auth: ClientAuth,
}

/// One `--tls-cert`/`--tls-key` pair (or a `[[tls.cert]]` table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// PEM chain, end-entity first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names it serves; empty: the names the certificate itself is valid for.
    pub names: Vec<String>,
}

/// What the balancer presents and trusts toward backends reached over TLS
/// (`--backend ADDR,tls[=NAME]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTlsSettings {
    /// CA bundle the backends' certificates must chain to.
    pub ca: PathBuf,
    /// A client certificate chain and key for backends that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The rustls client configuration for TLS backends.
pub fn backend_client_config(
    settings: &BackendTlsSettings,
) -> Result<Arc<rustls::ClientConfig>, InvalidSetting> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&settings.ca)
        .map_err(|e| file_error("tls-backend-ca", &settings.ca, e))?
    {
        let cert = cert.map_err(|e| file_error("tls-backend-ca", &settings.ca, e))?;
        roots
            .add(cert)
            .map_err(|e| InvalidSetting::new("tls-backend-ca", e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| InvalidSetting::new("tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match &settings.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect())
                .map_err(|e| file_error("tls-backend-cert", cert, e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error("tls-backend-key", key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| InvalidSetting::new("tls-backend-key", e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

/// The name a TLS backend's certificate is checked against, from its `tls=NAME` setting.
pub fn backend_server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// Client certificates with a CA configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client must present a certificate that chains to the CA.
    Required,
    /// A certificate, if presented, must chain to the CA; none is fine.
    Optional,
}

/// Handshake outcomes, by reason, and versions negotiated; shared by the connections of a
/// driver and read by `/metrics`.
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Handshakes completed.
    pub done: AtomicU64,
    /// Handshakes that failed: the peer sent something that is not TLS (a plain SIP message).
    pub failed_not_tls: AtomicU64,
    /// ... offered no protocol version or cipher suite we accept (TLS 1.1 and older).
    pub failed_version: AtomicU64,
    /// ... a client certificate was missing or did not verify.
    pub failed_certificate: AtomicU64,
    /// ... any other TLS error or a connection closed mid-handshake.
    pub failed_other: AtomicU64,
    /// ... not finished within [`HANDSHAKE_TIMEOUT`].
    pub failed_timeout: AtomicU64,
    /// Connections refused at accept: [`HANDSHAKES_MAX`] handshakes were in progress.
    pub refused_busy: AtomicU64,
    /// Handshakes that negotiated TLS 1.2.
    pub tls12: AtomicU64,
    /// Handshakes that negotiated TLS 1.3.
    pub tls13: AtomicU64,
}

impl TlsCounters {
    /// Counts a completed handshake and its version.
    pub fn handshake_done(&self, version: Option<rustls::ProtocolVersion>) {
        self.done.fetch_add(1, Ordering::Relaxed);
        match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => &self.tls13,
            _ => &self.tls12,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed handshake by the kind of its error.
    pub fn handshake_failed(&self, error: &std::io::Error) {
        let rustls_error = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        let counter = match rustls_error {
            Some(rustls::Error::InvalidMessage(_)) => &self.failed_not_tls,
            Some(rustls::Error::PeerIncompatible(_)) => &self.failed_version,
            Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
                &self.failed_certificate
            }
            _ => &self.failed_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(metric suffix, help, value)` of every counter, for `/metrics`.
    pub fn series(&self) -> [(&'static str, &'static str, u64); 9] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "tls_handshakes",
                "TLS handshakes completed",
                get(&self.done),
            ),
            (
                "tls_handshakes_failed_not_tls",
                "TLS handshakes failed: the peer did not speak TLS",
                get(&self.failed_not_tls),
            ),
            (
                "tls_handshakes_failed_version",
                "TLS handshakes failed: no common protocol version or suite",
                get(&self.failed_version),
            ),
            (
                "tls_handshakes_failed_certificate",
                "TLS handshakes failed: client certificate missing or invalid",
                get(&self.failed_certificate),
            ),
            (
                "tls_handshakes_failed_other",
                "TLS handshakes failed for another reason",
                get(&self.failed_other),
            ),
            (
                "tls_handshakes_failed_timeout",
                "TLS handshakes not finished in time",
                get(&self.failed_timeout),
            ),
            (
                "tls_refused_busy",
                "TLS connections refused: too many handshakes in progress",
                get(&self.refused_busy),
            ),
            (
                "tls_version_tls12",
                "TLS handshakes that negotiated TLS 1.2",
                get(&self.tls12),
            ),
            (
                "tls_version_tls13",
                "TLS handshakes that negotiated TLS 1.3",
                get(&self.tls13),
            ),
        ]
    }
}

/// The process's handshake counters: one set, whichever worker's listener took the handshake.
pub fn counters() -> Arc<TlsCounters> {
    static COUNTERS: std::sync::OnceLock<Arc<TlsCounters>> = std::sync::OnceLock::new();
    COUNTERS.get_or_init(Arc::default).clone()
}

/// The running TLS configuration: swapped whole on reload.
#[derive(Debug)]
pub struct Tls {
    current: RwLock<Arc<ServerConfig>>,
    /// Shared with `/metrics`.
    pub counters: Arc<TlsCounters>,
}

impl Tls {
    /// Loads every certificate, key and CA named in `settings`.
    pub fn load(settings: &TlsSettings) -> Result<Tls, InvalidSetting> {
        Ok(Tls {
            current: RwLock::new(server_config(settings)?),
            counters: counters(),
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rereads the files. On any error the running configuration stays and the error is
    /// returned (for the log line); established connections are never touched.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), InvalidSetting> {
        let next = server_config(settings)?;
        match self.current.write() {
            Ok(mut c) => *c = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, InvalidSetting> {
    let provider = provider();
    let mut keys = Vec::new();
    for pair in &settings.certs {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| file_error("tls-cert", &pair.cert, e))?;
        if chain.is_empty() {
            return Err(InvalidSetting::new(
                "tls-cert",
                format!("{}: no certificate in it", pair.cert.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&pair.key)
            .map_err(|e| file_error("tls-key", &pair.key, e))?;
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            InvalidSetting::new(
                "tls-key",
                format!(
                    "{}: does not fit {}: {e}",
                    pair.key.display(),
                    pair.cert.display()
                ),
            )
        })?;
        keys.push((pair.names.clone(), Arc::new(certified)));
    }
    if keys.is_empty() {
        return Err(InvalidSetting::new(
            "tls-cert",
            "a TLS listener needs at least one certificate and key",
        ));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| InvalidSetting::new("tls", e.to_string()))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| file_error("tls-client-ca", path, e))?
            {
                let cert = cert.map_err(|e| file_error("tls-client-ca", path, e))?;
                roots
                    .add(cert)
                    .map_err(|e| InvalidSetting::new("tls-client-ca", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| InvalidSetting::new("tls-client-ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { keys }));
    // SIP over TLS has no ALPN; resumption tickets are not worth their state for proxies that
    // keep one connection for hours.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn file_error(key: &'static str, path: &Path, e: impl std::fmt::Display) -> InvalidSetting {
    InvalidSetting::new(key, format!("{}: {e}", path.display()))
}

/// Picks the certificate for the client's SNI name: the first whose configured names hold
/// it, or (no names configured) that is valid for it; else the first certificate.
#[derive(Debug)]
struct BySni {
    keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let first = self.keys.first().map(|(_, k)| k.clone());
        let Some(name) = hello.server_name() else {
            return first;
        };
        let chosen = self.keys.iter().find(|(names, key)| {
            if names.is_empty() {
                serves(key, name)
            } else {
                names.iter().any(|n| n.eq_ignore_ascii_case(name))
            }
        });
        chosen.map(|(_, k)| k.clone()).or(first)
    }
}

/// Whether the end-entity certificate of `key` is valid for DNS name `name` (its SAN).
fn serves(key: &CertifiedKey, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Some(der) = key.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(der)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
}
