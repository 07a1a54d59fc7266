//! Dropping root: the web front loads its key and binds its port as root (when started so,
//! e.g. by `xdpgate run`), then becomes an unprivileged user before it reads a single request.
use nix::unistd::{Gid, Uid, User, getegid, geteuid, getgid, getuid, setgid, setgroups, setuid};

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The user does not exist.
    #[error("no user named {0:?} to run the web front as")]
    NoSuchUser(String),
    /// The configured user is root.
    #[error("refusing to run the web front as root ({0:?} has uid 0)")]
    RootUser(String),
    /// A system call failed.
    #[error("dropping privileges: {0}")]
    Sys(#[from] nix::Error),
    /// Root could be regained after the drop.
    #[error("privileges were not dropped: root can be regained")]
    NotDropped,
}

/// Becomes `user` if running as root (all threads: glibc's setuid applies process-wide);
/// does nothing otherwise. Returns the uid now in effect.
pub fn drop_to(user: &str) -> Result<Uid, PrivilegeError> {
    if !geteuid().is_root() {
        return Ok(geteuid());
    }
    let account =
        User::from_name(user)?.ok_or_else(|| PrivilegeError::NoSuchUser(user.to_owned()))?;
    if account.uid.is_root() {
        return Err(PrivilegeError::RootUser(user.to_owned()));
    }
    setgroups(&[account.gid])?;
    setgid(account.gid)?;
    setuid(account.uid)?;
    if setuid(Uid::from_raw(0)).is_ok() || getuid().is_root() || geteuid().is_root() {
        return Err(PrivilegeError::NotDropped);
    }
    if getgid() == Gid::from_raw(0) || getegid() == Gid::from_raw(0) {
        return Err(PrivilegeError::NotDropped);
    }
    Ok(account.uid)
}
