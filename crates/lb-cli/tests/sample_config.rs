//! `packaging/siplb.toml` stays a valid config file that shows every key: parsed as shipped,
//! parsed again with every commented key uncommented, and compared with the keys the file
//! parser knows (read from its own "unknown field, expected one of …" refusal, so a key added
//! to the parser and not to the sample fails here).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

const SAMPLE: &str = include_str!("../../../packaging/siplb.toml");

/// A self-signed P-256 certificate for sip-lb.example.com and its key, made once with
/// `openssl req -x509 -newkey ec`; test data only.
const SAMPLE_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBsDCCAVagAwIBAgIUF+u+hiGVk5r6mdWwqOZjjKnYN4MwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSc2lwLWxiLmV4YW1wbGUuY29tMCAXDTI2MTIwNDA0MzIyMFoY
DzIxMjYxMTEwMDQzMjIwWjAdMRswGQYDVQQDDBJzaXAtbGIuZXhhbXBsZS5jb20w
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQXBd7AkWkvPoqbhRGj3VtvMAsLZ+cV
0Fxmr4czIU/czrKJDk19xtAeMC1EAldwg3equv8VM/psqAjPdwR+O6Fjo3IwcDAd
BgNVHQ4EFgQUNoF98ma3iDXhMqneoc3iSBMSzxQwHwYDVR0jBBgwFoAUNoF98ma3
iDXhMqneoc3iSBMSzxQwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHREEFjAUghJzaXAt
bGIuZXhhbXBsZS5jb20wCgYIKoZIzj0EAwIDSAAwRQIgRIPQ+/2JMeJMataYnJw5
HMFqSPRSDfJkm3ty3WmCMGwCIQD6gsI1koe0LdCbJ9mWc2n5ttxYJz/q5Jp/ZR7p
vm2k4Q==
-----END CERTIFICATE-----
";
const SAMPLE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzIuySmdzgNxVquv7
Ibs03LmlXhgNLv75biRo10CB0WqhRANCAAQXBd7AkWkvPoqbhRGj3VtvMAsLZ+cV
0Fxmr4czIU/czrKJDk19xtAeMC1EAldwg3equv8VM/psqAjPdwR+O6Fj
-----END PRIVATE KEY-----
";

/// A directory per config file: the tests run in parallel and each writes the key files.
fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-cli-sample-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tag.keys"), "1:00112233445566778899aabbccddeeff\n").unwrap();
    // The TLS keys name certificate files: one self-signed certificate stands for all of them.
    for name in [
        "clients-ca.pem",
        "backends-ca.pem",
        "lb-client.pem",
        "sip-lb.pem",
    ] {
        std::fs::write(dir.join(name), SAMPLE_CERT).unwrap();
    }
    for name in ["lb-client.key", "sip-lb.key"] {
        std::fs::write(dir.join(name), SAMPLE_KEY).unwrap();
    }
    std::fs::write(
        dir.join("admin.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    dir
}

fn parse(name: &str, text: &str) -> Result<lb_cli::Settings, lb_cli::CliError> {
    let path = dir(name).join(name);
    std::fs::write(&path, text).unwrap();
    lb_cli::parse(["lb-tokio", "--config", path.to_str().unwrap()])
}

/// `# key = value` lines turned into `key = value` (the value's own comment kept).
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if key_of(rest).is_some() => rest.to_string(),
            _ => line.to_string(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// The key a `key = value` line sets.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(" = ")?;
    let key = key.trim();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')).then_some(key)
}

/// The keys of one table of the sample (`""` is the top level), commented or not.
fn sample_keys(text: &str, table: &str) -> BTreeSet<String> {
    let mut current = String::new();
    let mut keys = BTreeSet::new();
    for line in uncommented(text).lines() {
        if let Some(name) = line.trim().strip_prefix('[') {
            current = name.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some(key) = key_of(line) {
            if current == table {
                keys.insert(key.to_string());
            }
        }
    }
    keys
}

/// The keys the parser accepts in `table`, from its refusal of an unknown one.
fn parser_keys(table: &str) -> BTreeSet<String> {
    let text = match table {
        "" => "no-such-key = 1\n".to_string(),
        "backend" => "[[backend]]\naddr = \"127.0.0.1:1\"\nno-such-key = 1\n".to_string(),
        other => format!("[{other}]\nno-such-key = 1\n"),
    };
    let e = parse("unknown.toml", &text).unwrap_err().to_string();
    let expected = e
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("{e}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_sample_parses_as_shipped() {
    let s = parse("sample.toml", SAMPLE).unwrap();
    let c = s.core.config();
    assert_eq!(c.backends.len(), 2);
    assert_eq!(
        s.admin.addr,
        Some(lb_cli::ctl::DEFAULT_ADMIN.parse().unwrap())
    );
    assert_eq!(s.log_format, lb_cli::LogFormat::Json);
    assert!(!s.tag_key_generated);
}

#[test]
fn the_sample_parses_with_every_key_uncommented() {
    let s = parse("every-key.toml", &uncommented(SAMPLE)).unwrap();
    assert!(s.admin.has_token());
    assert!(s.core.config().tag_header.is_some());
}

#[test]
fn the_sample_shows_every_key_the_parser_knows() {
    for table in ["", "backend", "limits", "tls", "sanity"] {
        let mut want = parser_keys(table);
        if table.is_empty() {
            // Tables, checked on their own.
            want.remove("backend");
            want.remove("limits");
            want.remove("tls");
            want.remove("sanity");
        }

        assert_eq!(sample_keys(SAMPLE, table), want, "table [{table}]");
    }
}
