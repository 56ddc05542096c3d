//! The Kubernetes manifests (`deploy/kubernetes/`, docs/deploy.md), validated offline against
//! the Kubernetes API schemas by PyPI's `kubernetes-validate` (it ships the schemas), in a
//! virtual environment made once under the target folder; and the balancer configuration in the
//! ConfigMap checked by the balancer itself (`--check-config`); and the pod's preStop hook and
//! config-reload loop, taken from the StatefulSet, run against a real balancer.
//!
//! The image (`Containerfile`) is not built: no image registry is reachable where the tests
//! run. What is checked of it is that it runs as the user the manifests expect.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use siplb_e2e::bins;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime};
use siplb_e2e::net::{self, free_port};
use siplb_e2e::ops::http_get;
use siplb_e2e::process::Proc;
use siplb_e2e::RunDir;

/// The validator's version, pinned: its schemas define what "valid" means here.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";

/// Debian's Python: python3-venv belongs to it, not to a pyenv or other python3 on PATH.
const PYTHON: &str = "/usr/bin/python3";

const VENV_MISSING: &str = "python3-venv missing: run `cargo xtask test`, which installs it \
                            (Debian package python3-venv)";

fn manifests_dir() -> PathBuf {
    bins::workspace_root().join("deploy").join("kubernetes")
}

/// Every manifest, in name order.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifest in {}",
        manifests_dir().display()
    );
    files
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bins::workspace_root().join("target"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The venv holding the validator, made once per target folder and reused by later runs. The
/// stamp file is written last, so an interrupted install is made again, not taken for a
/// finished one. (A venv's scripts name its own path: it is made where it lives.)
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    static MAKING: Mutex<()> = Mutex::new(());
    VENV.get_or_init(|| {
        let _one = MAKING.lock().unwrap();
        let dir = target_dir().join("kubernetes-validate");
        let stamp = dir.join("installed");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == VALIDATOR) {
            return dir;
        }
        let ensurepip = run(Command::new(PYTHON).args(["-c", "import ensurepip"]));
        assert!(
            ensurepip.status.success(),
            "{VENV_MISSING}\n{}",
            text(&ensurepip)
        );
        let _ = std::fs::remove_dir_all(&dir);
        let made = run(Command::new(PYTHON).args(["-m", "venv"]).arg(&dir));
        assert!(made.status.success(), "python3 -m venv:\n{}", text(&made));
        let pip = run(Command::new(dir.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            VALIDATOR,
        ]));
        assert!(
            pip.status.success(),
            "pip install {VALIDATOR} (PyPI must be reachable the first time):\n{}",
            text(&pip)
        );
        std::fs::write(&stamp, VALIDATOR).unwrap();
        dir
    })
}

/// `kubernetes-validate --strict` (unknown fields are errors too) over `files`.
fn validate(files: &[PathBuf]) -> Output {
    run(Command::new(venv().join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(files))
}

/// How many resources (YAML documents with a `kind`) a manifest holds.
fn resources_in(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("kind: "))
        .count()
}

#[test]
fn every_manifest_validates() {
    let files = manifests();
    let out = validate(&files);
    let report = text(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    // One `passed` line per resource, and nothing else to say.
    let want: usize = files.iter().map(|f| resources_in(f)).sum();
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, want, "{report}");
    assert!(
        !report.contains("ERROR") && !report.contains("WARN"),
        "{report}"
    );
    for kind in [
        "statefulset/siplb",
        "service/siplb",
        "configmap/siplb-config",
        "secret/siplb-tag-keys",
    ] {
        assert!(
            report.contains(&format!("resource {kind} ")),
            "no {kind}:\n{report}"
        );
    }
}

/// The check can fail: a copy of the StatefulSet with a wrong type, and one with a misspelt
/// field, are both refused, with the field named.
#[test]
fn a_broken_manifest_fails_validation() {
    let dir = RunDir::new("deploy-broken");
    let good = std::fs::read_to_string(manifests_dir().join("statefulset.yaml")).unwrap();
    let cases = [
        (
            "containerPort: 5060",
            "containerPort: \"5060\"",
            "containerPort",
        ),
        ("serviceName: siplb", "servicename: siplb", "servicename"),
    ];
    for (i, (from, to, named)) in cases.iter().enumerate() {
        assert!(good.contains(from), "statefulset.yaml has no `{from}`");
        let broken = dir.file(&format!("broken-{i}.yaml"));
        std::fs::write(&broken, good.replacen(from, to, 1)).unwrap();
        let out = validate(&[broken]);
        let report = text(&out);
        assert!(
            !out.status.success() && report.contains("ERROR") && report.contains(named),
            "`{to}` was not refused:\n{report}"
        );
    }
}

/// The ConfigMap's `siplb.toml` is a configuration the balancer accepts, with the tag key file
/// and the flags the StatefulSet adds.
#[test]
fn the_configmap_holds_a_valid_configuration() {
    let dir = RunDir::new("deploy-config");
    let config = dir.file("siplb.toml");
    let extract = run(Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, yaml; open(sys.argv[2], 'w').write(\
             yaml.safe_load(open(sys.argv[1]))['data']['siplb.toml'])",
        ])
        .arg(manifests_dir().join("configmap.yaml"))
        .arg(&config));
    assert!(extract.status.success(), "{}", text(&extract));
    let keys = dir.file("tag.keys");
    std::fs::write(&keys, format!("1:{}\n", "ab".repeat(32))).unwrap();
    let check = run(Command::new(Runtime::Tokio.binary())
        .arg("--config")
        .arg(&config)
        .arg("--tag-key-file")
        .arg(&keys)
        .args([
            "--advertise=siplb-0.siplb.default.svc.cluster.local:5060",
            "--advertise-backend=siplb-internal.default.svc.cluster.local:5060",
            "--check-config",
        ]));
    assert!(
        check.status.success(),
        "lb-tokio --check-config refused the ConfigMap's siplb.toml:\n{}",
        text(&check)
    );
}

/// The image runs as the user the pods' security context names.
#[test]
fn the_image_runs_as_the_manifests_user() {
    let file = std::fs::read_to_string(bins::workspace_root().join("Containerfile")).unwrap();
    let user = file
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("Containerfile sets no USER");
    let uid = user.split(':').next().unwrap().trim();
    assert_ne!(uid, "0", "the image runs as root");
    let sts = std::fs::read_to_string(manifests_dir().join("statefulset.yaml")).unwrap();
    assert!(
        sts.contains(&format!("runAsUser: {uid}")) && sts.contains("runAsNonRoot: true"),
        "statefulset.yaml does not run as the image's user {uid}"
    );
}

/// A string of the StatefulSet, by a Python expression over its parsed YAML `d`.
fn from_statefulset(expr: &str) -> String {
    let out = run(Command::new(venv().join("bin/python"))
        .args([
            "-c",
            &format!("import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); print({expr})"),
        ])
        .arg(manifests_dir().join("statefulset.yaml")));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The pod's preStop hook, run against a real balancer (its 30 s wait cut to 0): every
/// backend ends up draining, and the balancer still runs (SIGTERM is the kubelet's, later).
#[test]
fn the_prestop_hook_drains_every_backend() {
    let dir = RunDir::new("deploy-prestop");
    // Backends that only accept: the balancer connects and counts them up.
    let backends: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind(net::local(free_port())).unwrap())
        .collect();
    let admin = net::local(free_port());
    let spec = LbSpec::new(
        Runtime::Tokio,
        backends
            .iter()
            .map(|b| BackendArg::plain(b.local_addr().unwrap()))
            .collect(),
    )
    .with_args(&["--admin", &admin.to_string()]);
    let mut lb = Balancer::start(&dir, spec);
    net::wait_until("the admin API", Duration::from_secs(5), || {
        net::is_listening(admin.port())
    });
    let hook = from_statefulset(
        "d['spec']['template']['spec']['containers'][0]['lifecycle']['preStop']['exec']['command'][2]",
    );
    assert!(hook.contains("sleep 30"), "{hook}");
    let ctl = bins::binary("lb-cli", "siplb-ctl");
    let path = format!(
        "{}:{}",
        ctl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new("/bin/sh")
        .args(["-c", &hook.replace("sleep 30", "sleep 0")])
        .env("PATH", path)
        .env("SIPLB_ADMIN", admin.to_string()));
    assert!(
        out.status.success(),
        "the preStop hook failed:\n{}",
        text(&out)
    );
    let (status, body) = http_get(admin, "/backends");
    assert_eq!(status, 200, "{body}");
    let states: Vec<&str> = body
        .match_indices("\"state\":")
        .map(|(i, _)| &body[i..])
        .collect();
    assert_eq!(states.len(), backends.len(), "{body}");
    assert!(
        states
            .iter()
            .all(|s| s.starts_with("\"state\":\"draining\"")),
        "not every backend is draining after the preStop hook:\n{body}\n{}",
        text(&out)
    );
    lb.stop();
}

/// One mounted ConfigMap or Secret volume as the kubelet writes it: the files are links into
/// `..data`, a link to a timestamped folder; an update writes a new folder and swaps `..data`
/// with one rename.
struct ProjectedVolume {
    dir: PathBuf,
    version: u32,
}

impl ProjectedVolume {
    fn new(dir: PathBuf, file: &str, content: &str) -> ProjectedVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = ProjectedVolume { dir, version: 0 };
        v.update(file, content);
        std::os::unix::fs::symlink(format!("..data/{file}"), v.dir.join(file)).unwrap();
        v
    }

    fn update(&mut self, file: &str, content: &str) {
        self.version += 1;
        let name = format!("..2026_12_04_{}", self.version);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join(file), content).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// The pod's config-reload container, run with a real balancer in a PID namespace of their own
/// (as in a pod with `shareProcessNamespace`: the loop finds the balancer by name and must not
/// see any other balancer on this machine): a ConfigMap update, swapped in as the kubelet does,
/// is applied by SIGHUP.
#[test]
fn the_reload_sidecar_applies_a_configmap_change() {
    let dir = RunDir::new("deploy-reload");
    let backends: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind(net::local(free_port())).unwrap())
        .collect();
    let addr = |i: usize| backends[i].local_addr().unwrap();
    let listen = net::local(free_port());
    let config = |n: usize| {
        let mut text = format!(
            "listen = [\"{listen}\"]\ntag-key-file = \"{}\"\nlog-level = \"info\"\nworkers = 2\n",
            dir.file("keys/tag.keys").display()
        );
        for i in 0..n {
            text.push_str(&format!("[[backend]]\naddr = \"{}\"\n", addr(i)));
        }
        text
    };
    let mut volume = ProjectedVolume::new(dir.file("config"), "siplb.toml", &config(1));
    let _keys = ProjectedVolume::new(
        dir.file("keys"),
        "tag.keys",
        &format!("1:{}\n", "cd".repeat(32)),
    );
    let sidecar = from_statefulset("d['spec']['template']['spec']['containers'][1]['command'][2]");
    assert!(
        sidecar.contains("sleep 5") && sidecar.contains("/etc/siplb/"),
        "{sidecar}"
    );
    let sidecar = sidecar
        .replace("/etc/siplb/", &format!("{}/", dir.path().display()))
        .replace("sleep 5", "sleep 0.2");
    let mut cmd = Command::new("unshare");
    // A PID namespace needs root, or a user namespace of its own for anyone else.
    let uid = run(Command::new("id").arg("-u"));
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--pid", "--mount-proc", "--kill-child", "/bin/sh", "-c"])
        .arg("\"$LB\" --config \"$CONFIG\" & exec /bin/sh -c \"$SIDECAR\"")
        .env("LB", Runtime::Tokio.binary())
        .env("CONFIG", dir.file("config/siplb.toml"))
        .env("SIDECAR", &sidecar)
        .current_dir(dir.path());
    let mut pod = Proc::spawn("pod", cmd, dir.path());
    let first = addr(0).port();
    net::wait_until("the balancer to connect", Duration::from_secs(10), || {
        assert!(pod.is_running(), "{}", pod.output_tail(20));
        net::is_listening(listen.port()) && net::accepted_connections(first) >= 1
    });
    // The sidecar has taken its first look once it has slept a round.
    std::thread::sleep(Duration::from_millis(500));
    volume.update("siplb.toml", &config(2));
    let second = addr(1).port();
    // SIGHUP reaches every worker (two here), which the admin API's reload would not.
    let reloaded = "configuration reloaded added=1 removed=0";
    let applied = net::poll_until(Duration::from_secs(10), || {
        net::accepted_connections(second) >= 2 && pod.output_tail(40).matches(reloaded).count() == 2
    });
    let log = pod.output_tail(40);
    assert!(
        applied && log.contains("config changed: SIGHUP"),
        "the ConfigMap change was not applied by a reload on both workers:\n{log}"
    );
}
