//! Loads the XDP program, pins its maps and links, attaches it, and undoes all that.
//!
//! Layout under the configured bpffs folder (`<dir>/v<layout>/`): one file per map (pinned by
//! name) and `link-<interface>` per attachment. A pinned link keeps the program attached while
//! no controller runs; a restarted controller swaps its freshly loaded program into the
//! existing link atomically (`bpf_link_update`), so there is never a moment without a gate.
use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use gateway_common::{MAP_LAYOUT_VERSION, PROGRAM_NAME, map_names, prefilter};
use tracing::{info, warn};

use super::GateError;
use crate::config::XdpModeSetting;

/// The compiled XDP program, built by `build.rs`.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

/// How an interface ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// `native` or `generic` for a fresh attachment, `kept` when a pinned link was reused.
    pub mode: String,
}

/// Folder holding this layout version's pins.
pub fn pin_folder(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join(format!("v{MAP_LAYOUT_VERSION}"))
}

fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("link-{interface}"))
}

/// Loads the program with private maps that nothing else shares and nothing keeps pinned
/// (tests and benchmarks).
///
/// The program declares its maps pinned by name, and aya pins such maps (under /sys/fs/bpf
/// when no folder is given, reusing what is there), so this pins into a fresh folder and
/// removes the pins at once; the maps live on through the returned object.
pub fn load_unpinned(max_openings: u32) -> Result<Ebpf, GateError> {
    load_unpinned_with(max_openings, Some(prefilter::shift_for(max_openings)))
}

/// [`load_unpinned`] with a chosen prefilter size: `Some(log2 of the bits)`, or `None` for a
/// program that never reads its prefilter (the benchmark's baseline).
pub fn load_unpinned_with(
    max_openings: u32,
    prefilter_shift: Option<u32>,
) -> Result<Ebpf, GateError> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch =
        PathBuf::from("/sys/fs/bpf").join(format!("xdpgate-private-{}-{n}", std::process::id()));
    let loaded = load_pinned_with(&scratch, max_openings, prefilter_shift);
    let cleaned = remove_map_pins(&scratch);
    let ebpf = loaded?;
    cleaned?;
    Ok(ebpf)
}

/// Removes the map pins in `dir` and the folder itself.
fn remove_map_pins(dir: &Path) -> Result<(), GateError> {
    for name in map_names::ALL {
        remove_pin(&dir.join(name))?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GateError::Io {
            what: format!("removing {}", dir.display()),
            source,
        }),
    }
}

/// Loads the program, reusing maps already pinned in `pin_dir` (creating them otherwise).
///
/// The prefilters get `8 × max_openings` bits each (see [`prefilter::shift_for`]); a pinned
/// prefilter of another size is derived state and is replaced (`GateMaps::take` rebuilds it).
pub fn load_pinned(pin_dir: &Path, max_openings: u32) -> Result<Ebpf, GateError> {
    load_pinned_with(
        pin_dir,
        max_openings,
        Some(prefilter::shift_for(max_openings)),
    )
}

fn load_pinned_with(
    pin_dir: &Path,
    max_openings: u32,
    prefilter_shift: Option<u32>,
) -> Result<Ebpf, GateError> {
    ensure_bpffs(pin_dir)?;
    let shift = prefilter_shift
        .unwrap_or(prefilter::MIN_SHIFT)
        .clamp(prefilter::MIN_SHIFT, prefilter::MAX_SHIFT);
    let words = prefilter::words(shift);
    for name in [map_names::PREFILTER_V4, map_names::PREFILTER_V6] {
        drop_resized_pin(&pin_dir.join(name), words)?;
    }
    let program_shift: u32 = if prefilter_shift.is_some() { shift } else { 0 };
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(map_names::OPEN_V4, max_openings)
        .map_max_entries(map_names::OPEN_V6, max_openings)
        .map_max_entries(map_names::PREFILTER_V4, words)
        .map_max_entries(map_names::PREFILTER_V6, words)
        .override_global(prefilter::SHIFT_GLOBAL, &program_shift, true)
        .load(PROGRAM_OBJECT)?;
    program(&mut ebpf)?.load()?;
    Ok(ebpf)
}

/// Removes the prefilter pinned at `pin` if it does not have `words` words, so the loader
/// creates one of the wanted size. A program still attached keeps its old map (and the bits
/// it had) until the new program replaces it.
fn drop_resized_pin(pin: &Path, words: u32) -> Result<(), GateError> {
    if !pin.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(pin).map_err(|source| GateError::Map {
        name: "pinned prefilter",
        source,
    })?;
    if info.max_entries() != words {
        warn!(pin = %pin.display(), had = info.max_entries(), wanted = words, "prefilter size changed; replacing it");
        remove_pin(pin)?;
    }
    Ok(())
}

/// The XDP program inside a loaded object.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, GateError> {
    let program = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(GateError::MissingProgram)?;
    Ok(program.try_into()?)
}

fn ensure_bpffs(pin_dir: &Path) -> Result<(), GateError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| GateError::Io {
        what: "reading /proc/mounts".into(),
        source,
    })?;
    let on_bpffs = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let mount_point = fields.nth(1).unwrap_or_default();
        let fs_type = fields.next().unwrap_or_default();
        fs_type == "bpf" && pin_dir.starts_with(mount_point)
    });
    if !on_bpffs {
        return Err(GateError::NotBpffs(pin_dir.to_owned()));
    }
    fs::create_dir_all(pin_dir).map_err(|source| GateError::Io {
        what: format!("creating {}", pin_dir.display()),
        source,
    })
}

/// Attaches the loaded program to every interface, pinning each link. An interface whose
/// link is already pinned gets the new program swapped in without detaching. Each link's
/// file descriptor is returned with it: while the caller holds it, removing the pin from
/// outside does not detach the gate (see `guard`).
pub fn attach_all(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    interfaces: &[String],
    mode: XdpModeSetting,
) -> Result<Vec<(Attachment, FdLink)>, GateError> {
    let xdp = program(ebpf)?;
    let older = older_layouts(pin_dir);
    let mut out = Vec::with_capacity(interfaces.len());
    for interface in interfaces {
        let pin = link_pin(pin_dir, interface);
        let kept = if pin.exists() {
            replace_in_pinned_link(xdp, &pin, interface)?
        } else {
            migrate_link(xdp, &older, pin_dir, interface)?
        };
        let (mode_name, link) = match kept {
            Some(link) => ("kept", link),
            None => attach_and_pin(xdp, &pin, interface, mode)?,
        };
        out.push((
            Attachment {
                interface: interface.clone(),
                mode: mode_name.to_owned(),
            },
            link,
        ));
    }
    detach_unlisted(pin_dir, interfaces)?;
    retire_layouts(&older)?;
    Ok(out)
}

/// The pin folders of other map layout versions beside `pin_dir` (`v1`, ... under the same
/// bpffs folder): what an older (or newer) release left.
fn older_layouts(pin_dir: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(own)) = (pin_dir.parent(), pin_dir.file_name()) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name() != own)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Moves `interface`'s link from an older layout's folder into `pin_dir` without detaching:
/// the new program is swapped into the old link (atomically, as on every restart), the link is
/// pinned in the new folder, then its old pin goes. `Ok(None)`: no older link to take over.
fn migrate_link(
    xdp: &mut Xdp,
    older: &[PathBuf],
    pin_dir: &Path,
    interface: &str,
) -> Result<Option<FdLink>, GateError> {
    for dir in older {
        let old_pin = link_pin(dir, interface);
        if !old_pin.exists() {
            continue;
        }
        let Some(link) = replace_in_pinned_link(xdp, &old_pin, interface)? else {
            continue;
        };
        fs::create_dir_all(pin_dir).map_err(|source| GateError::Io {
            what: format!("creating {}", pin_dir.display()),
            source,
        })?;
        let pinned = link.pin(link_pin(pin_dir, interface))?;
        remove_pin(&old_pin)?;
        info!(
            interface,
            from = %dir.display(),
            to = %pin_dir.display(),
            "took over the gate's link from an older map layout without detaching"
        );
        return Ok(Some(FdLink::from(pinned)));
    }
    Ok(None)
}

/// Removes what other layout versions left once every configured interface runs the new
/// program: their remaining pins (maps, and links of interfaces no longer configured, which
/// detaches those) and their folders.
fn retire_layouts(older: &[PathBuf]) -> Result<(), GateError> {
    for dir in older {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            remove_pin(&entry.path())?;
        }
        fs::remove_dir(dir).map_err(|source| GateError::Io {
            what: format!("removing {}", dir.display()),
            source,
        })?;
        info!(folder = %dir.display(), "removed the pins of an older map layout");
    }
    Ok(())
}

/// Swaps `xdp` into the link pinned at `pin` and returns that link. `Ok(None)` if the link is
/// defunct (its interface went away) and was removed, so the caller attaches afresh.
fn replace_in_pinned_link(
    xdp: &mut Xdp,
    pin: &Path,
    interface: &str,
) -> Result<Option<FdLink>, GateError> {
    let pinned = PinnedLink::from_pin(pin)?;
    // `From<PinnedLink> for FdLink` keeps the pin file: the link stays attached throughout.
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    match xdp.attach_to_link(link) {
        Ok(id) => {
            info!(
                interface,
                "reused pinned XDP link; program replaced atomically"
            );
            Ok(Some(FdLink::try_from(xdp.take_link(id)?)?))
        }
        Err(err) => {
            warn!(interface, error = %err, "pinned XDP link is defunct; attaching afresh");
            remove_pin(pin)?;
            Ok(None)
        }
    }
}

/// The pin file of `interface`'s link.
pub fn link_pin_path(pin_dir: &Path, interface: &str) -> PathBuf {
    link_pin(pin_dir, interface)
}

/// Attaches `xdp` to `interface` afresh (replacing a stale pin) and pins the new link.
pub fn attach_fresh(
    xdp: &mut Xdp,
    pin_dir: &Path,
    interface: &str,
    mode: XdpModeSetting,
) -> Result<(&'static str, FdLink), GateError> {
    fs::create_dir_all(pin_dir).map_err(|source| GateError::Io {
        what: format!("creating {}", pin_dir.display()),
        source,
    })?;
    let pin = link_pin(pin_dir, interface);
    remove_pin(&pin)?;
    attach_and_pin(xdp, &pin, interface, mode)
}

/// Pins a link the controller holds again (after its pin file was removed from outside).
pub fn repin(link: FdLink, pin_dir: &Path, interface: &str) -> Result<FdLink, GateError> {
    fs::create_dir_all(pin_dir).map_err(|source| GateError::Io {
        what: format!("creating {}", pin_dir.display()),
        source,
    })?;
    Ok(FdLink::from(link.pin(link_pin(pin_dir, interface))?))
}

fn attach_and_pin(
    xdp: &mut Xdp,
    pin: &Path,
    interface: &str,
    mode: XdpModeSetting,
) -> Result<(&'static str, FdLink), GateError> {
    let (link_id, mode_name) = match mode {
        XdpModeSetting::Native => (xdp.attach(interface, XdpMode::Driver)?, "native"),
        XdpModeSetting::Generic => (xdp.attach(interface, XdpMode::Skb)?, "generic"),
        XdpModeSetting::Auto => match xdp.attach(interface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(err) => {
                warn!(interface, error = %err, "native XDP failed; falling back to generic mode");
                (xdp.attach(interface, XdpMode::Skb)?, "generic")
            }
        },
    };
    let link = FdLink::try_from(xdp.take_link(link_id)?)?;
    let pinned = link.pin(pin)?;
    info!(
        interface,
        mode = mode_name,
        "attached XDP gate and pinned its link"
    );
    Ok((mode_name, FdLink::from(pinned)))
}

/// Removes links pinned for interfaces no longer configured.
fn detach_unlisted(pin_dir: &Path, interfaces: &[String]) -> Result<(), GateError> {
    for (interface, pin) in pinned_links(pin_dir)? {
        if !interfaces.contains(&interface) {
            warn!(
                interface,
                "interface no longer configured; detaching its gate"
            );
            remove_pin(&pin)?;
        }
    }
    Ok(())
}

fn pinned_links(pin_dir: &Path) -> Result<Vec<(String, PathBuf)>, GateError> {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(interface) = name.strip_prefix("link-") {
            out.push((interface.to_owned(), entry.path()));
        }
    }
    Ok(out)
}

fn remove_pin(path: &Path) -> Result<(), GateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GateError::Io {
            what: format!("removing {}", path.display()),
            source,
        }),
    }
}

/// Removes every link and map pinned under `bpffs_dir` (all layout versions); returns what
/// was removed. The XDP program is detached once its last link pin is gone.
pub fn detach_all(bpffs_dir: &Path) -> Result<Vec<PathBuf>, GateError> {
    let mut removed = Vec::new();
    let Ok(versions) = fs::read_dir(bpffs_dir) else {
        return Ok(removed);
    };
    for version in versions.flatten() {
        let dir = version.path();
        for (_, pin) in pinned_links(&dir)? {
            remove_pin(&pin)?;
            removed.push(pin);
        }
        removed.extend(
            map_names::ALL
                .iter()
                .map(|name| dir.join(name))
                .filter(|pin| pin.exists()),
        );
        remove_map_pins(&dir)?;
    }
    let _ = fs::remove_dir(bpffs_dir);
    Ok(removed)
}
