//! TLS: `--listen-tls`, the certificates of TLS listeners and the client side toward TLS
//! backends, each checked by loading it.

use super::*;

/// What TLS backends are verified with: a CA is required once a backend asks for TLS (a
/// connection to a backend nobody can verify is no better than TCP), a client certificate is
/// optional. Loaded once here so a bad file fails the start with its name.
pub(super) fn merge_backend_tls(
    args: &Args,
    file: &FileConfig,
    file_path: Option<&Path>,
    wanted: bool,
) -> Result<Option<lb_runtime::tls::BackendTlsSettings>, CliError> {
    let relative = |p: &PathBuf| match file_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.clone(),
    };
    let ca = args
        .tls_backend_ca
        .clone()
        .or_else(|| file.tls.backend_ca.as_ref().map(relative));
    let cert = args
        .tls_backend_cert
        .clone()
        .or_else(|| file.tls.backend_cert.as_ref().map(relative));
    let key = args
        .tls_backend_key
        .clone()
        .or_else(|| file.tls.backend_key.as_ref().map(relative));
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(CliError::invalid(
                "tls-backend-key",
                "tls-backend-cert and tls-backend-key go together",
            ))
        }
    };
    if !wanted {
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err(CliError::invalid(
            "tls-backend-ca",
            "a backend with tls needs a CA to verify it against",
        ));
    };
    let settings = lb_runtime::tls::BackendTlsSettings { ca, client_cert };
    lb_runtime::tls::backend_client_config(&settings)?;
    Ok(Some(settings))
}

/// The TLS settings of `--listen-tls` listeners: flags' pairs replace the file's `[[tls.cert]]`
/// list; paths in the file are relative to it. Every file is loaded once here, so a bad one
/// fails `--check-config` and the start with its name.
pub(super) fn merge_tls(
    args: &Args,
    file: &FileConfig,
    file_path: Option<&Path>,
    listening: bool,
) -> Result<Option<lb_runtime::tls::TlsSettings>, CliError> {
    use lb_runtime::tls::{CertPair, ClientAuth, TlsSettings};
    let relative = |p: &PathBuf| match file_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.clone(),
    };
    if args.tls_cert.len() != args.tls_key.len() {
        return Err(CliError::invalid(
            "tls-key",
            format!(
                "{} --tls-cert but {} --tls-key: give them in pairs",
                args.tls_cert.len(),
                args.tls_key.len()
            ),
        ));
    }
    let certs: Vec<CertPair> = if args.tls_cert.is_empty() {
        file.tls
            .cert
            .iter()
            .map(|c| CertPair {
                cert: relative(&c.cert),
                key: relative(&c.key),
                names: c.names.clone(),
            })
            .collect()
    } else {
        args.tls_cert
            .iter()
            .zip(&args.tls_key)
            .map(|(cert, key)| CertPair {
                cert: cert.clone(),
                key: key.clone(),
                names: Vec::new(),
            })
            .collect()
    };
    let client_ca = args
        .tls_client_ca
        .clone()
        .or_else(|| file.tls.client_ca.as_ref().map(relative));
    let client_auth = match args
        .tls_client_auth
        .as_deref()
        .or(file.tls.client_auth.as_deref())
    {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            return Err(CliError::invalid(
                "tls-client-auth",
                format!("{other:?} is not required or optional"),
            ))
        }
    };
    if !listening {
        if !certs.is_empty() || client_ca.is_some() {
            return Err(CliError::invalid(
                "tls-cert",
                "certificates given but no --listen-tls address",
            ));
        }
        return Ok(None);
    }
    let settings = TlsSettings {
        certs,
        client_ca,
        client_auth,
    };
    lb_runtime::tls::Tls::load(&settings)?;
    Ok(Some(settings))
}

/// `ADDR[,proxy-protocol]` of `--listen-tls` (and the file's `listen-tls` list).
pub(super) fn parse_tls_listener(text: &str) -> Result<(SocketAddr, bool), CliError> {
    let mut parts = text.split(',');
    let addr = parse_addr("listen-tls", parts.next().unwrap_or_default())?;
    let mut proxied = false;
    for option in parts {
        match option.trim() {
            "proxy-protocol" => proxied = true,
            other => {
                return Err(CliError::invalid(
                    "listen-tls",
                    format!("unknown option {other:?} (known: proxy-protocol)"),
                ))
            }
        }
    }
    Ok((addr, proxied))
}
