//! Backends: `--backend ADDR[,weight=N]…` and `[[backend]]` tables, by address or DNS name,
//! and the values they share (addresses, modes, the algorithm).

use super::*;

/// A backend whose mode may still come from the `backend-mode` default.
pub(super) struct PartialBackend {
    pub(super) config: BackendConfig,
    pub(super) mode: Option<BackendMode>,
    /// Given by DNS name; `config.addr` is a placeholder then.
    pub(super) name: Option<DnsName>,
}

/// A backend's host name: (as written, host, port).
pub(super) type DnsName = (String, String, Option<u16>);

/// A backend's `addr`: `IP:PORT`, or a DNS name (`lb_runtime::named`) with a placeholder address.
pub(super) fn backend_addr(text: &str) -> Result<(SocketAddr, Option<DnsName>), CliError> {
    match (
        parse_addr("backend", text),
        lb_runtime::named::parse_name(text),
    ) {
        (Ok(addr), _) => Ok((addr, None)),
        (Err(_), Some((host, port))) => Ok((
            SocketAddr::from(([0, 0, 0, 0], 0)),
            Some((text.trim().to_string(), host, port)),
        )),
        (Err(e), None) => Err(CliError::invalid(
            "backend",
            format!(
                "{}, nor a host name",
                e.to_string().trim_start_matches("backend: ")
            ),
        )),
    }
}

pub(super) fn file_backend(b: &FileBackend) -> Result<PartialBackend, CliError> {
    let (addr, name) = backend_addr(&b.addr)?;
    let mut config = BackendConfig::plain(addr);
    if let Some(w) = b.weight {
        config.weight = w;
    }
    if let Some(backup) = &b.backup {
        config.backup = Some(parse_addr("backend", backup)?);
    }
    config.draining = b.draining;
    // `tls = true` checks the certificate for the address, `tls = "NAME"` for that name.
    config.tls = match &b.tls {
        None | Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::Boolean(true)) => Some(match &name {
            Some((_, host, _)) => host.clone(),
            None => config.addr.ip().to_string(),
        }),
        Some(toml::Value::String(name)) => Some(name.clone()),
        Some(other) => {
            return Err(CliError::invalid(
                "backend",
                format!("tls = {other}: true, false or a name"),
            ))
        }
    };
    let mode = b
        .mode
        .as_deref()
        .map(|m| parse_mode("backend", m))
        .transpose()?;
    Ok(PartialBackend { config, mode, name })
}

/// `ADDR[,weight=N][,mode=plain|envelope][,backup=ADDR][,draining]`.
pub(super) fn parse_backend(spec: &str) -> Result<PartialBackend, CliError> {
    let mut parts = spec.split(',');
    let (addr, dns_name) = backend_addr(parts.next().unwrap_or_default())?;
    let mut config = BackendConfig::plain(addr);
    let mut mode = None;
    for part in parts {
        let part = part.trim();
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        match name {
            "weight" => {
                config.weight = value.parse().map_err(|_| {
                    CliError::invalid(
                        "backend",
                        format!("{spec:?}: weight {value:?} is not a number"),
                    )
                })?;
            }
            "mode" => mode = Some(parse_mode("backend", value)?),
            "backup" => config.backup = Some(parse_addr("backend", value)?),
            "draining" if value.is_empty() => config.draining = true,
            // TLS to the backend, its certificate checked for `tls=NAME`, else its address.
            "tls" if value.is_empty() => {
                config.tls = Some(match &dns_name {
                    Some((_, host, _)) => host.clone(),
                    None => config.addr.ip().to_string(),
                })
            }
            "tls" => config.tls = Some(value.to_string()),
            _ => {
                return Err(CliError::invalid(
                    "backend",
                    format!(
                        "{spec:?}: unknown option {part:?} (weight=, mode=, backup=, draining, tls[=NAME])"
                    ),
                ))
            }
        }
    }
    Ok(PartialBackend {
        config,
        mode,
        name: dns_name,
    })
}

pub(super) fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, CliError> {
    text.trim()
        .parse()
        .map_err(|_| CliError::invalid(key, format!("{text:?} is not IP:PORT")))
}

pub(super) fn parse_mode(key: &'static str, text: &str) -> Result<BackendMode, CliError> {
    match text.trim() {
        "plain" => Ok(BackendMode::Plain),
        "envelope" => Ok(BackendMode::Envelope),
        _ => Err(CliError::invalid(
            key,
            format!("mode {text:?} is not plain or envelope"),
        )),
    }
}

pub(super) fn parse_algorithm(text: &str) -> Result<Algorithm, CliError> {
    match text.trim() {
        "round-robin" => Ok(Algorithm::RoundRobin),
        "weighted" => Ok(Algorithm::Weighted),
        "least-loaded" => Ok(Algorithm::LeastLoaded),
        _ => Err(CliError::invalid(
            "algorithm",
            format!("{text:?} is not round-robin, weighted or least-loaded"),
        )),
    }
}
