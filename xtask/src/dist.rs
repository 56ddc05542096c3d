//! `cargo xtask dist`: man pages and shell completions for the installed binaries, generated
//! from their own clap definitions (`lb_cli::command`, `lb_cli::ctl::command`), into
//! `target/dist`:
//!
//! ```text
//! target/dist/man/{lb-tokio,lb-mio,siplb-ctl}.1
//! target/dist/completions/{lb-tokio,lb-mio,siplb-ctl}.bash
//! target/dist/completions/_{lb-tokio,lb-mio,siplb-ctl}          (zsh)
//! target/dist/completions/{lb-tokio,lb-mio,siplb-ctl}.fish
//! ```
//!
//! Generated, never committed, so they cannot drift from `--help`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap_complete::Shell;

/// The entry point of `dist`: generates into `target/dist` and lists what it wrote.
pub(crate) fn dist() -> Result<()> {
    let out = crate::target_dir().join("dist");
    for path in generate(&out)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// The binaries whose pages and completions ship, with their command lines.
fn commands() -> Vec<clap::Command> {
    vec![
        lb_cli::command("lb-tokio"),
        lb_cli::command("lb-mio"),
        lb_cli::ctl::command(),
    ]
}

/// Writes every man page and completion script under `out`; returns their paths.
pub(crate) fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let man_dir = out.join("man");
    let completions = out.join("completions");
    for dir in [&man_dir, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut written = Vec::new();
    for mut cmd in commands() {
        let name = cmd.get_name().to_string();
        let page = man_dir.join(format!("{name}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut bytes)
            .with_context(|| format!("rendering the man page of {name}"))?;
        std::fs::write(&page, bytes).with_context(|| format!("writing {}", page.display()))?;
        written.push(page);
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = clap_complete::generate_to(shell, &mut cmd, &name, &completions)
                .with_context(|| format!("writing the {shell} completions of {name}"))?;
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn dist_writes_man_pages_and_completions() {
        let out = std::env::temp_dir().join(format!("xtask-dist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let written = generate(&out).unwrap();
        assert_eq!(written.len(), 3 * 4, "{written:?}");
        for name in ["lb-tokio", "lb-mio", "siplb-ctl"] {
            let page = std::fs::read_to_string(out.join("man").join(format!("{name}.1"))).unwrap();
            assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
            assert!(page.contains(&name.replace('-', "\\-")), "{name}: {page}");
            for file in [
                format!("{name}.bash"),
                format!("_{name}"),
                format!("{name}.fish"),
            ] {
                let text = std::fs::read_to_string(out.join("completions").join(&file)).unwrap();
                assert!(text.contains(name), "{file}");
            }
        }
        let tokio = std::fs::read_to_string(out.join("man/lb-tokio.1")).unwrap();
        for flag in ["admin\\-token\\-file", "log\\-format", "metrics"] {
            assert!(tokio.contains(flag), "no {flag} in lb-tokio.1");
        }
        let bash = std::fs::read_to_string(out.join("completions/siplb-ctl.bash")).unwrap();
        assert!(bash.contains("drain") && bash.contains("weight"), "{bash}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
