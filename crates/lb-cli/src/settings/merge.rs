//! Flags over the file: one [`Settings`] from both, validated by the core.

use super::*;

/// `previous_keys`: on a reload without a key file, the key made at start (kept, not redrawn).
pub(super) fn merge(
    args: Args,
    file: Option<(FileConfig, PathBuf)>,
    previous_keys: Option<&[TagKey]>,
) -> Result<Settings, CliError> {
    let kept = args.clone();
    let (file, file_path) = match file {
        Some((f, p)) => (f, Some(p)),
        None => (FileConfig::default(), None),
    };
    let mut core = Config::default();

    let listen = if args.listen.is_empty() {
        &file.listen
    } else {
        &args.listen
    };
    core.listeners = listen
        .iter()
        .map(|a| parse_addr("listen", a))
        .collect::<Result<_, _>>()?;
    let listen_tls = if args.listen_tls.is_empty() {
        &file.listen_tls
    } else {
        &args.listen_tls
    };
    let listen_tls = listen_tls
        .iter()
        .map(|a| parse_tls_listener(a))
        .collect::<Result<Vec<_>, _>>()?;
    core.tls_listeners = listen_tls.iter().map(|(addr, _)| *addr).collect();
    let proxy_protocol_tls = listen_tls
        .iter()
        .filter(|(_, proxied)| *proxied)
        .map(|(addr, _)| *addr)
        .collect();
    core.advertise_tls = args.advertise_tls.clone().or(file.advertise_tls.clone());
    core.trace_call_ids = if args.trace_call_id.is_empty() {
        file.trace_call_id.clone()
    } else {
        args.trace_call_id.clone()
    };
    let tls = merge_tls(
        &args,
        &file,
        file_path.as_deref(),
        !core.tls_listeners.is_empty(),
    )?;

    let default_mode = match args
        .backend_mode
        .as_deref()
        .or(file.backend_mode.as_deref())
    {
        Some(m) => parse_mode("backend-mode", m)?,
        None => BackendMode::Plain,
    };
    let backends: Vec<PartialBackend> = if args.backend.is_empty() {
        file.backend
            .iter()
            .map(file_backend)
            .collect::<Result<_, _>>()?
    } else {
        args.backend
            .iter()
            .map(|s| parse_backend(s))
            .collect::<Result<_, _>>()?
    };
    let mut named = Vec::new();
    core.backends = Vec::new();
    for b in backends {
        let config = BackendConfig {
            mode: b.mode.unwrap_or(default_mode),
            ..b.config
        };
        match b.name {
            Some((name, host, port)) => {
                if named
                    .iter()
                    .any(|n: &lb_runtime::named::NamedBackend| n.name == name)
                {
                    return Err(CliError::invalid(
                        "backend",
                        format!("{name} is given twice"),
                    ));
                }
                named.push(lb_runtime::named::NamedBackend::new(
                    name, host, port, config,
                ));
            }
            None => core.backends.push(config),
        }
    }
    if !named.is_empty() {
        let resolver = lb_runtime::named::SystemResolver::new()
            .map_err(|e| CliError::invalid("backend", format!("no resolver: {e}")))?;
        for b in lb_runtime::named::resolve_all(&mut named, &resolver) {
            // An address given both ways is one backend, configured as its address says.
            if !core.backends.iter().any(|c| c.addr == b.addr) {
                core.backends.push(b);
            }
        }
    }
    let resolve_interval = pick_secs(
        "resolve-interval",
        args.resolve_interval.as_deref(),
        file.resolve_interval,
    )?
    .unwrap_or(lb_runtime::named::RESOLVE_INTERVAL);
    if resolve_interval < Duration::from_millis(100) {
        return Err(CliError::invalid(
            "resolve-interval",
            "at least 0.1 seconds",
        ));
    }

    let backend_tls = merge_backend_tls(
        &args,
        &file,
        file_path.as_deref(),
        core.backends.iter().any(|b| b.tls.is_some()),
    )?;

    if let Some(a) = args.algorithm.as_deref().or(file.algorithm.as_deref()) {
        core.algorithm = parse_algorithm(a)?;
    }
    if let Some(d) = pick_secs("window", args.window.as_deref(), file.window)? {
        core.window = d;
    }
    if let Some(d) = pick_secs("ringing-max", args.ringing_max.as_deref(), file.ringing_max)? {
        core.ringing_max = d;
    }
    for (key, flag, value, slot) in [
        ("retry-after", None, file.retry_after, &mut core.retry_after),
        (
            "reconnect-min",
            None,
            file.reconnect_min,
            &mut core.reconnect_min,
        ),
        (
            "reconnect-max",
            None,
            file.reconnect_max,
            &mut core.reconnect_max,
        ),
        (
            "idle-timeout",
            args.idle_timeout.as_deref(),
            file.idle_timeout,
            &mut core.idle_timeout,
        ),
        (
            "partial-timeout",
            args.partial_timeout.as_deref(),
            file.partial_timeout,
            &mut core.partial_timeout,
        ),
        (
            "overload-hold",
            args.overload_hold.as_deref(),
            file.overload_hold,
            &mut core.overload_hold,
        ),
        (
            "overload-hold-max",
            None,
            file.overload_hold_max,
            &mut core.overload_hold_max,
        ),
        (
            "stall-timeout",
            args.stall_timeout.as_deref(),
            file.stall_timeout,
            &mut core.stall_timeout,
        ),
    ] {
        if let Some(d) = pick_secs(key, flag, value)? {
            *slot = d;
        }
    }
    core.probe = merge_probe(&args, &file)?;
    core.advertise = args.advertise.or(file.advertise);
    core.advertise_backend = args.advertise_backend.or(file.advertise_backend);
    core.tag_header = args.tag_header.or(file.tag_header);

    let l = &mut core.limits;
    let fl = &file.limits;
    for (value, slot) in [
        (fl.message_bytes_max, &mut l.message_bytes_max),
        (fl.headers_max, &mut l.headers_max),
        (fl.buffered_bytes_max, &mut l.buffered_bytes_max),
        (fl.frontends_max, &mut l.frontends_max),
        (fl.table_capacity, &mut l.table_capacity),
        (fl.dial_outs_max, &mut l.dial_outs_max),
        (fl.dial_queue_max, &mut l.dial_queue_max),
    ] {
        if let Some(v) = value {
            *slot = v;
        }
    }
    if let Some(v) = fl.table_share_percent {
        l.table_share_percent = v;
    }
    if let Some(v) = fl.table_share_per_ip_percent {
        l.table_share_per_ip_percent = v;
    }
    if let Some(v) = fl.frontends_per_ip_max {
        l.frontends_per_ip_max = v;
    }
    if let Some(v) = fl.frontends_reserve_percent {
        l.frontends_reserve_percent = v;
    }
    if let Some(d) = pick_secs("limits.frontend-evict-idle", None, fl.frontend_evict_idle)? {
        l.frontend_evict_idle = d;
    }
    let passive = &mut core.passive;
    if let Some(d) = pick_secs("unanswered-timeout", None, file.unanswered_timeout)? {
        passive.unanswered_timeout = d;
    }
    if let Some(d) = pick_secs("unanswered-hold", None, file.unanswered_hold)? {
        passive.hold = d;
    }
    if let Some(n) = file.unanswered_to_down {
        passive.unanswered_to_down = n;
    }
    let (sanity, fs) = (&mut core.sanity, &file.sanity);
    sanity.enabled = fs.enabled.unwrap_or(true) && !args.no_sanity_checks;
    for (value, slot) in [
        (fs.host_bytes_max, &mut sanity.host_bytes_max),
        (fs.uri_bytes_max, &mut sanity.uri_bytes_max),
        (fs.field_bytes_max, &mut sanity.field_bytes_max),
    ] {
        if let Some(v) = value {
            *slot = v;
        }
    }

    // A key file named in the config file is relative to that file, so a config directory can
    // be moved as a whole.
    let key_file = match (args.tag_key_file, file.tag_key_file) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(match file_path.as_deref().and_then(Path::parent) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        }),
        (None, None) => None,
    };
    let tag_key_generated = key_file.is_none();
    core.tag_keys = match (key_file, previous_keys) {
        (Some(path), _) => read_tag_keys(&path)?,
        (None, Some(keys)) => keys.to_vec(),
        (None, None) => vec![random_tag_key()?],
    };

    let log_level = args
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".to_string());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        return Err(CliError::invalid(
            "log-level",
            format!("{log_level:?}: {e}"),
        ));
    }

    let output_cap_bytes = match (args.output_cap, file.output_cap) {
        (Some(s), _) => parse_bytes("output-cap", &s)?,
        (None, Some(n)) => usize::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| CliError::invalid("output-cap", format!("{n} is out of range")))?,
        (None, None) => OUTPUT_CAP_DEFAULT,
    };
    let (output_high_water_bytes, output_low_water_bytes) = merge_watermarks(
        (args.output_high_water.as_ref(), file.output_high_water),
        (args.output_low_water.as_ref(), file.output_low_water),
        output_cap_bytes,
    )?;

    let metrics = match args.metrics.as_deref().or(file.metrics.as_deref()) {
        Some(a) => Some(parse_addr("metrics", a)?),
        None => None,
    };

    let batch_window = pick_secs(
        "batch-window",
        args.batch_window.as_deref(),
        file.batch_window,
    )?
    .unwrap_or(BATCH_WINDOW_DEFAULT);
    if batch_window > BATCH_WINDOW_MAX {
        return Err(CliError::invalid(
            "batch-window",
            format!(
                "{} s is more than the {} s a SIP hop should add",
                batch_window.as_secs_f64(),
                BATCH_WINDOW_MAX.as_secs_f64()
            ),
        ));
    }

    let log_format = match args.log_format.as_deref().or(file.log_format.as_deref()) {
        Some(text) => crate::LogFormat::parse(text).ok_or_else(|| {
            CliError::invalid("log-format", format!("{text:?} is not text or json"))
        })?,
        None => crate::LogFormat::Text,
    };
    let admin = match args.admin.as_deref().or(file.admin.as_deref()) {
        Some(a) => Some(parse_addr("admin", a)?),
        None => None,
    };
    let token_file = relative_to(
        args.admin_token_file,
        file.admin_token_file,
        file_path.as_deref(),
    );
    let admin = crate::admin::AdminSettings::new(admin, token_file.as_deref())?;
    let workers = match pick_count("workers", args.workers.as_deref(), file.workers)? {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    };
    if workers > WORKERS_MAX {
        return Err(CliError::invalid(
            "workers",
            format!("{workers} is more than {WORKERS_MAX}"),
        ));
    }
    // The plain listeners'; each TLS listener says for itself (`ADDR,proxy-protocol`).
    let proxy_protocol = args.proxy_protocol || file.proxy_protocol.unwrap_or(false);
    // A frontend connection alone from its IP in one worker is not alone in the process.
    core.hop_by_unique_ip = workers == 1;

    Ok(Settings {
        core: core.validate()?,
        log_level,
        check_config: args.check_config,
        output_cap_bytes,
        output_high_water_bytes,
        output_low_water_bytes,
        tag_key_generated,
        metrics,
        batch_window,
        tls,
        backend_tls,
        log_format,
        admin,
        workers,
        proxy_protocol,
        named,
        resolve_interval,
        proxy_protocol_tls,
        args: kept,
    })
}

/// The flag's path, else the file's, which is relative to the config file.
pub(super) fn relative_to(
    flag: Option<PathBuf>,
    file: Option<PathBuf>,
    config: Option<&Path>,
) -> Option<PathBuf> {
    match (flag, file) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(match config.and_then(Path::parent) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        }),
        (None, None) => None,
    }
}
