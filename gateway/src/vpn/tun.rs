//! Persistent tun interfaces: made by the privileged controller before the VPN server starts,
//! so the VPN server attaches to it as an unprivileged user and never needs root.
//!
//! The `tun` crate opens `/dev/net/tun`, names the interface (TUNSETIFF) and sets its address;
//! TUNSETOWNER, TUNSETGROUP and TUNSETPERSIST are issued here with `libc::ioctl`, because
//! the crate (0.7.22) passes their argument as a pointer where the kernel takes the value:
//! its `user()` sets the owner to a pointer's low bits (found by the end-to-end test).
use std::os::fd::{AsRawFd as _, RawFd};

use tracing::info;

use crate::config::TunConfig;

/// Why a tun interface could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The owner or group does not exist.
    #[error("no such {kind} {name:?}")]
    UnknownId {
        /// `user` or `group`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
    /// Looking up the owner failed.
    #[error("looking up {name:?}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The OS error.
        source: nix::Error,
    },
    /// A tun ioctl or the address setup failed.
    #[error("tun interface {name}: {source}")]
    Tun {
        /// Interface name.
        name: String,
        /// The crate's error.
        source: tun::Error,
    },
    /// TUNSETOWNER, TUNSETGROUP or TUNSETPERSIST failed.
    #[error("tun interface {name}: {ioctl}: {source}")]
    Ioctl {
        /// Interface name.
        name: String,
        /// The ioctl.
        ioctl: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What [`ensure_persistent`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunOutcome {
    /// The interface was created now.
    Created,
    /// It existed already (a controller restart, or made by the operator); left as it is.
    Existing,
}

/// Makes `config.name` a persistent tun interface owned by `config.owner` (and group), with
/// `config.address` set and the link up. An existing interface is left alone (its VPN server
/// may be attached to it right now).
pub fn ensure_persistent(config: &TunConfig) -> Result<TunOutcome, TunError> {
    // Asked of the kernel in our own network namespace (sysfs may show another one).
    if nix::net::if_::if_nametoindex(config.name.as_str()).is_ok() {
        info!(tun = %config.name, "tun interface exists already; left as it is");
        return Ok(TunOutcome::Existing);
    }
    let uid = lookup_user(&config.owner)?;
    let gid = config.group.as_deref().map(lookup_group).transpose()?;
    let tun_err = |source| TunError::Tun {
        name: config.name.clone(),
        source,
    };
    let mut settings = tun::Configuration::default();
    settings.tun_name(&config.name).layer(tun::Layer::L3);
    match config.address {
        Some(net) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(net.prefix))
                .unwrap_or(0);
            settings
                .address(net.addr)
                .netmask(std::net::Ipv4Addr::from(mask))
                .up();
        }
        None => {
            settings.platform_config(|p| {
                p.ensure_root_privileges(false);
            });
        }
    }
    let device = tun::create(&settings).map_err(tun_err)?;
    let fd = device.as_raw_fd();
    let ioctl_err = |ioctl| {
        move |source| TunError::Ioctl {
            name: config.name.clone(),
            ioctl,
            source,
        }
    };
    // The crate opens /dev/net/tun without O_CLOEXEC: no child may inherit the descriptor.
    set_cloexec(fd).map_err(ioctl_err("F_SETFD FD_CLOEXEC"))?;
    tun_ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)).map_err(ioctl_err("TUNSETOWNER"))?;
    if let Some(gid) = gid {
        tun_ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid))
            .map_err(ioctl_err("TUNSETGROUP"))?;
    }
    tun_ioctl(fd, libc::TUNSETPERSIST, 1).map_err(ioctl_err("TUNSETPERSIST"))?;
    // Closing our descriptor leaves the persistent interface behind for the VPN server.
    drop(device);
    info!(tun = %config.name, owner = %config.owner, group = ?config.group, address = ?config.address, "persistent tun interface created");
    Ok(TunOutcome::Created)
}

/// Marks `fd` close-on-exec.
fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl F_GETFD/F_SETFD on a descriptor we own only reads and sets its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One TUNSET* ioctl whose argument is passed by value.
fn tun_ioctl(fd: RawFd, request: libc::Ioctl, value: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: `fd` is an open /dev/net/tun descriptor attached to an interface (TUNSETIFF
    // succeeded); TUNSETOWNER, TUNSETGROUP and TUNSETPERSIST read their argument as an
    // integer (drivers/net/tun.c), so no memory is passed to the kernel.
    let rc = unsafe { libc::ioctl(fd, request, value) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn lookup_user(name: &str) -> Result<u32, TunError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(TunError::UnknownId {
            kind: "user",
            name: name.to_owned(),
        }),
        Err(source) => Err(TunError::Lookup {
            name: name.to_owned(),
            source,
        }),
    }
}

fn lookup_group(name: &str) -> Result<u32, TunError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(TunError::UnknownId {
            kind: "group",
            name: name.to_owned(),
        }),
        Err(source) => Err(TunError::Lookup {
            name: name.to_owned(),
            source,
        }),
    }
}
