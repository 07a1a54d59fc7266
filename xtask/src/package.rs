//! `cargo xtask package`: a Debian package built with `dpkg-deb` from the release binary and
//! the files in `packaging/` (units, sysusers.d, tmpfiles.d, the conffile, maintainer
//! scripts), with man pages and shell completions generated from the clap definitions.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    run::{output, run_checked},
    workspace,
};

/// Where each packaged file goes: (source under the workspace, destination, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "packaging/systemd/xdpgate-controller.service",
        "usr/lib/systemd/system/xdpgate-controller.service",
        0o644,
    ),
    (
        "packaging/systemd/xdpgate-web.service",
        "usr/lib/systemd/system/xdpgate-web.service",
        0o644,
    ),
    (
        "packaging/sysusers.d/xdpgate.conf",
        "usr/lib/sysusers.d/xdpgate.conf",
        0o644,
    ),
    (
        "packaging/tmpfiles.d/xdpgate.conf",
        "usr/lib/tmpfiles.d/xdpgate.conf",
        0o644,
    ),
    ("packaging/xdpgate.toml", "etc/xdpgate/xdpgate.toml", 0o640),
    (
        "config/example.toml",
        "usr/share/doc/xdpgate/example.toml",
        0o644,
    ),
    ("README.md", "usr/share/doc/xdpgate/README.md", 0o644),
    (
        "docs/OPERATIONS.md",
        "usr/share/doc/xdpgate/OPERATIONS.md",
        0o644,
    ),
    (
        "docs/PROTOCOL.md",
        "usr/share/doc/xdpgate/PROTOCOL.md",
        0o644,
    ),
    ("docs/OPENVPN.md", "usr/share/doc/xdpgate/OPENVPN.md", 0o644),
];

/// Maintainer scripts and control files copied into `DEBIAN/`.
const CONTROL: &[(&str, u32)] = &[
    ("conffiles", 0o644),
    ("postinst", 0o755),
    ("prerm", 0o755),
    ("postrm", 0o755),
];

/// Builds `<target>/package/xdpgate_<version>_<arch>.deb` from the release binary `bin`.
pub fn package(bin: &Path) -> Result<PathBuf> {
    let root = workspace::root();
    let out = workspace::target_dir()?.join("package");
    let stage = out.join("root");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cleaning {}", stage.display()))?;
    }
    install(bin, &stage.join("usr/bin/xdpgate"), 0o755)?;
    for (source, dest, mode) in FILES {
        install(&root.join(source), &stage.join(dest), *mode)?;
    }
    generate_docs(bin, &stage, &out)?;
    let debian = stage.join("DEBIAN");
    for (name, mode) in CONTROL {
        install(
            &root.join("packaging/debian").join(name),
            &debian.join(name),
            *mode,
        )?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let size_kib = tree_size(&stage)?.div_ceil(1024);
    let control = fs::read_to_string(root.join("packaging/debian/control"))
        .context("reading packaging/debian/control")?
        .replace("@VERSION@", version)
        .replace("@ARCH@", &arch)
        .replace("@SIZE@", &size_kib.to_string());
    write(&debian.join("control"), &control, 0o644)?;
    let deb = out.join(format!("xdpgate_{version}_{arch}.deb"));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Man pages (gzipped, as Debian ships them) and completions from `xdpgate generate-docs`.
fn generate_docs(bin: &Path, stage: &Path, out: &Path) -> Result<()> {
    let generated = out.join("generated");
    if generated.exists() {
        fs::remove_dir_all(&generated)
            .with_context(|| format!("cleaning {}", generated.display()))?;
    }
    run_checked(
        Command::new(bin)
            .arg("generate-docs")
            .arg("--out")
            .arg(&generated),
    )?;
    let man_dir = stage.join("usr/share/man/man1");
    fs::create_dir_all(&man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
    let mut pages = 0;
    for entry in fs::read_dir(generated.join("man1")).context("reading generated man pages")? {
        let path = entry.context("reading generated man pages")?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let dest = man_dir.join(name);
        install(&path, &dest, 0o644)?;
        run_checked(Command::new("gzip").args(["-9n", "-f"]).arg(&dest))?;
        pages += 1;
    }
    if pages == 0 {
        bail!("xdpgate generate-docs wrote no man page");
    }
    let completions = generated.join("completions");
    install(
        &completions.join("xdpgate.bash"),
        &stage.join("usr/share/bash-completion/completions/xdpgate"),
        0o644,
    )?;
    install(
        &completions.join("_xdpgate"),
        &stage.join("usr/share/zsh/vendor-completions/_xdpgate"),
        0o644,
    )?;
    install(
        &completions.join("xdpgate.fish"),
        &stage.join("usr/share/fish/vendor_completions.d/xdpgate.fish"),
        0o644,
    )?;
    Ok(())
}

fn install(source: &Path, dest: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(source, dest)
        .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))
}

fn write(dest: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(dest, text).with_context(|| format!("writing {}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))
}

fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let meta = entry
            .metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
