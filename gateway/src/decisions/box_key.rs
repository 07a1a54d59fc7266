//! The server's long-term NaCl box key pair, in a 0600 file in the state folder, and its
//! rotation (`docs/PROTOCOL.md` §16): `box.key` holds the current key; after
//! `xdpgate keys rotate`, `box-previous.key` holds the previous one and the end of its overlap.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::approval::{BoxKeyRing, BoxKeySet as _, KeyError, ServerBoxKeys};

/// The current key's file in the state folder.
pub const CURRENT_FILE: &str = "box.key";
/// The previous key's file during a rotation overlap.
pub const PREVIOUS_FILE: &str = "box-previous.key";
/// Shortest overlap `keys rotate` accepts (use days in practice: a client learns the new key
/// only by asking during the overlap).
pub const MIN_OVERLAP: Duration = Duration::from_secs(5);
/// Longest overlap.
pub const MAX_OVERLAP: Duration = Duration::from_secs(400 * 86_400);

/// Errors of loading or creating the box key.
#[derive(Debug, thiserror::Error)]
pub enum BoxKeyError {
    /// Reading or writing the key file failed.
    #[error("box key file {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("box key file {path}: {source}")]
    Key {
        /// The key file.
        path: String,
        /// Decode error.
        source: KeyError,
    },
    /// The file is readable by others than its owner.
    #[error("box key file {0} must not be readable by group or others (chmod 600)")]
    Permissions(String),
    /// The previous key's file is not `<base64 secret>` and `until=<unix seconds>` lines.
    #[error("box key file {0}: expected the secret key and an until=UNIX line")]
    PreviousFormat(String),
    /// A rotation is still in its overlap.
    #[error(
        "the previous box key still opens requests until {until} (Unix seconds); rotate again after that"
    )]
    RotationInProgress {
        /// End of the running overlap.
        until: u64,
    },
    /// The overlap asked for is out of range.
    #[error("the overlap must be between 5 s and 400 days")]
    Overlap,
    /// Replacing a key file failed.
    #[error("box key file {0}")]
    Write(#[from] crate::tls::TlsError),
}

fn read_private(path: &Path) -> Result<String, BoxKeyError> {
    let name = path.display().to_string();
    let io = |source| BoxKeyError::Io {
        path: name.clone(),
        source,
    };
    let text = fs::read_to_string(path).map_err(io)?;
    let mode = fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(BoxKeyError::Permissions(name));
    }
    Ok(text)
}

/// Loads the ring of `state_dir`: the current key (created on first use) and, while its
/// overlap lasts at `now_unix`, the previous one. An ended overlap's file is removed.
pub fn load_ring(state_dir: &Path, now_unix: u64) -> Result<BoxKeyRing, BoxKeyError> {
    let current = load_or_create(&state_dir.join(CURRENT_FILE))?;
    let path = state_dir.join(PREVIOUS_FILE);
    if !path.exists() {
        return Ok(BoxKeyRing::new(current));
    }
    let name = path.display().to_string();
    let text = zeroize::Zeroizing::new(read_private(&path)?);
    let mut lines = text.lines();
    let secret = lines.next().unwrap_or_default().trim();
    let until = lines
        .next()
        .and_then(|line| line.trim().strip_prefix("until="))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| BoxKeyError::PreviousFormat(name.clone()))?;
    let previous = ServerBoxKeys::from_base64(secret).map_err(|source| BoxKeyError::Key {
        path: name.clone(),
        source,
    })?;
    if now_unix >= until {
        fs::remove_file(&path).map_err(|source| BoxKeyError::Io { path: name, source })?;
        return Ok(BoxKeyRing::new(current));
    }
    Ok(BoxKeyRing::with_previous(current, previous, until))
}

/// `xdpgate keys rotate`: a new current key; the current one becomes the previous key until
/// `now_unix + overlap`. Refused while an earlier overlap lasts. The previous key's file is
/// written before the current one is replaced, so a crash in between loses no key.
pub fn rotate(
    state_dir: &Path,
    ring: &BoxKeyRing,
    overlap: Duration,
    now_unix: u64,
) -> Result<BoxKeyRing, BoxKeyError> {
    if !(MIN_OVERLAP..=MAX_OVERLAP).contains(&overlap) {
        return Err(BoxKeyError::Overlap);
    }
    if let Some((previous, until)) = ring.previous_at(now_unix) {
        // A rotation cut short after its first write has previous == current: finish it.
        let unfinished = previous.public_key().to_bytes() == ring.current().public_key().to_bytes();
        if !unfinished {
            return Err(BoxKeyError::RotationInProgress { until });
        }
    }
    let path_of = |file: &str| -> PathBuf { state_dir.join(file) };
    let fresh = ServerBoxKeys::generate().map_err(|source| BoxKeyError::Key {
        path: path_of(CURRENT_FILE).display().to_string(),
        source,
    })?;
    let until = now_unix.saturating_add(overlap.as_secs());
    let old = ring.current().clone();
    let previous_text =
        zeroize::Zeroizing::new(format!("{}\nuntil={until}\n", old.to_base64().as_str()));
    crate::tls::replace_file(&path_of(PREVIOUS_FILE), previous_text.as_bytes(), 0o600)?;
    crate::tls::replace_file(&path_of(CURRENT_FILE), fresh.to_base64().as_bytes(), 0o600)?;
    Ok(BoxKeyRing::with_previous(fresh, old, until))
}

/// Loads the key pair from `path`, creating it (mode 0600) on first use.
pub fn load_or_create(path: &Path) -> Result<ServerBoxKeys, BoxKeyError> {
    let name = path.display().to_string();
    let io = |source| BoxKeyError::Io {
        path: name.clone(),
        source,
    };
    match read_private(path) {
        Ok(text) => ServerBoxKeys::from_base64(text.trim())
            .map_err(|source| BoxKeyError::Key { path: name, source }),
        Err(BoxKeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let keys = ServerBoxKeys::generate().map_err(|source| BoxKeyError::Key {
                path: name.clone(),
                source,
            })?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(keys.to_base64().as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(keys)
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box.key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = load_or_create(&path).unwrap();
        assert_eq!(first.public_key().to_bytes(), again.public_key().to_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(BoxKeyError::Permissions(_))
        ));
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_its_overlap_only() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let first = load_ring(dir.path(), now).unwrap();
        let old = first.current().public_key().to_bytes();
        assert!(first.previous().is_none());
        assert!(matches!(
            rotate(dir.path(), &first, Duration::from_secs(1), now),
            Err(BoxKeyError::Overlap)
        ));
        let rotated = rotate(dir.path(), &first, Duration::from_secs(3600), now).unwrap();
        assert_ne!(rotated.current().public_key().to_bytes(), old);
        let (previous, until) = rotated.previous().unwrap();
        assert_eq!((previous.public_key().to_bytes(), until), (old, now + 3600));
        for file in [CURRENT_FILE, PREVIOUS_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        // A restart inside the overlap reads the same ring; a second rotation is refused.
        let reloaded = load_ring(dir.path(), now + 10).unwrap();
        assert_eq!(
            reloaded.current().public_key().to_bytes(),
            rotated.current().public_key().to_bytes()
        );
        assert_eq!(reloaded.previous().unwrap().0.public_key().to_bytes(), old);
        assert!(matches!(
            rotate(dir.path(), &reloaded, Duration::from_secs(3600), now + 10),
            Err(BoxKeyError::RotationInProgress { until }) if until == now + 3600
        ));
        // After the overlap the previous key is gone, from memory and from disk.
        let after = load_ring(dir.path(), now + 3600).unwrap();
        assert!(after.previous().is_none());
        assert!(!dir.path().join(PREVIOUS_FILE).exists());
    }
}
