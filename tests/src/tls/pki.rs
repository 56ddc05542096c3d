//! Certificates: a test CA made with the `openssl` CLI and the certificates it issues.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::RunDir;

use super::{openssl, run_openssl, write_atomically};

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (end-entity only; the test CA is the trust anchor).
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

impl CertFiles {
    /// Replaces these two files with copies of `other`'s, each by a rename, so that a reader
    /// never sees half a file.
    pub fn replace_with(&self, other: &CertFiles) {
        for (from, to) in [(&other.cert, &self.cert), (&other.key, &self.key)] {
            let text = std::fs::read(from).expect("reading the new certificate file");
            write_atomically(to, &text);
        }
    }

    /// Overwrites the certificate file with `text` (e.g. a broken one), by a rename.
    pub fn overwrite_cert(&self, text: &str) {
        write_atomically(&self.cert, text.as_bytes());
    }

    /// Overwrites only the key file with a copy of `other`'s key, by a rename.
    pub fn replace_key_with(&self, other: &CertFiles) {
        let text = std::fs::read(&other.key).expect("reading the other key");
        write_atomically(&self.key, &text);
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// A test CA in a folder of the run directory, and the certificates it issues there.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    ca: CertFiles,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (`serverAuth`), valid for its DNS name and for IP 127.0.0.1.
    Server,
    /// A TLS client (`clientAuth`).
    Client,
}

impl Pki {
    /// Makes a CA (ECDSA P-256, valid two days) in `dir/NAME/`, subject `O=siplb e2e, CN=NAME`.
    pub fn new(dir: &RunDir, name: &str) -> Pki {
        let path = dir.file(name);
        std::fs::create_dir_all(&path).expect("creating the PKI folder");
        let ca = CertFiles {
            cert: path.join("ca.pem"),
            key: path.join("ca.key"),
        };
        let subj = format!("/O=siplb e2e/CN={name}");
        run_openssl(
            &path,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir: path, ca }
    }

    /// The CA certificate (the trust anchor to give peers).
    pub fn ca(&self) -> &Path {
        &self.ca.cert
    }

    /// Issues a certificate for `cn` (a DNS name, also its SAN) with serial `serial` and
    /// subject `O=ORG, CN=cn`, as `dir/FILE.pem` and `dir/FILE.key` (a new key each time).
    pub fn issue(&self, file: &str, cn: &str, org: &str, serial: u32, usage: Usage) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        let csr = format!("{file}.csr");
        let ext = format!("{file}.ext");
        let (eku, san) = match usage {
            Usage::Server => ("serverAuth", format!("DNS:{cn},IP:127.0.0.1")),
            Usage::Client => ("clientAuth", format!("DNS:{cn}")),
        };
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n\
                 extendedKeyUsage={eku}\n\
                 subjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\n\
                 subjectAltName={san}\n"
            ),
        )
        .expect("writing the extensions file");
        let key = files.key.display().to_string();
        let cert = files.cert.display().to_string();
        run_openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/O={org}/CN={cn}"),
            ],
        );
        run_openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        files
    }

    /// A server certificate for `name` (and 127.0.0.1), subject `O=siplb e2e, CN=name`.
    pub fn server(&self, file: &str, name: &str, serial: u32) -> CertFiles {
        self.issue(file, name, "siplb e2e", serial, Usage::Server)
    }

    /// A client certificate for `name`.
    pub fn client(&self, file: &str, name: &str, serial: u32) -> CertFiles {
        self.issue(file, name, "siplb e2e", serial, Usage::Client)
    }
}

/// `openssl x509` on a PEM certificate: (subject in RFC 2253 form, serial in hex).
pub fn cert_identity(pem: &str) -> (String, String) {
    let mut child = Command::new(openssl())
        .args([
            "x509", "-noout", "-subject", "-serial", "-nameopt", "RFC2253",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl x509");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("writing to openssl x509");
    let out = child.wait_with_output().expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "openssl x509 on {pem:?}: {text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (field("subject="), field("serial="))
}

/// The identity of a certificate file.
pub fn file_identity(cert: &CertFiles) -> (String, String) {
    cert_identity(&std::fs::read_to_string(&cert.cert).expect("reading a certificate"))
}
