//! The server's long-term NaCl box key pair, in a 0600 file in the state folder.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use crate::approval::{KeyError, ServerBoxKeys};

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
}

/// Loads the key pair from `path`, creating it (mode 0600) on first use.
pub fn load_or_create(path: &Path) -> Result<ServerBoxKeys, BoxKeyError> {
    let name = path.display().to_string();
    let io = |source| BoxKeyError::Io {
        path: name.clone(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(BoxKeyError::Permissions(name));
            }
            ServerBoxKeys::from_base64(text.trim())
                .map_err(|source| BoxKeyError::Key { path: name, source })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
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
        Err(err) => Err(io(err)),
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
}
