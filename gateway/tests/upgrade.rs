//! Upgrades of stored state: a state folder written by an earlier release (kept in
//! `tests/fixtures/upgrade/`, made by its `generate.sh` with that release's binary) opens
//! with this one, migrated in place after a backup copy, with every client, opening, audit
//! event and the server key intact.
// The fixture helper outside #[test] fns panics on setup failures like the tests do.
#![allow(clippy::expect_used)]
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use xdpgate::store::{AuditTable, SCHEMA_VERSION, Store};

fn fixture(version: u64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/upgrade")
        .join(format!("state-v{version}"))
}

/// A private copy of a fixture (the test must not change the one in the repo).
fn copy_of(version: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = fixture(version);
    let entries = fs::read_dir(&from)
        .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("fixture entry");
        let to = dir.path().join(entry.file_name());
        fs::copy(entry.path(), &to).expect("copying the fixture");
        // Git keeps no 0600: restore the modes the controller wrote (and insists on).
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

#[test]
fn a_version_1_state_folder_is_migrated_with_everything_in_it() {
    assert_eq!(
        SCHEMA_VERSION, 2,
        "add a fixture and a test for the new version"
    );
    let dir = copy_of(1);
    let original = fs::read(dir.path().join(Store::FILE_NAME)).expect("fixture file");
    let key_before = fs::read(dir.path().join("box.key")).expect("fixture key");
    {
        let store = Store::open(dir.path()).expect("an older file opens");
        let clients = store.clients().expect("clients");
        let mut names: Vec<(&str, bool, &[String])> = clients
            .iter()
            .map(|c| (c.client_id.as_str(), c.enabled, c.servers.as_slice()))
            .collect();
        names.sort_unstable();
        let vpn1 = ["vpn1".to_owned()];
        assert_eq!(
            names,
            vec![("alice", true, &vpn1[..]), ("bob", false, &vpn1[..])]
        );
        let openings = store.load_openings().expect("openings");
        assert_eq!(openings.len(), 1, "{openings:?}");
        assert_eq!(openings[0].id.addr.to_string(), "192.0.2.7");
        let audit = store
            .audit_page(AuditTable::Decisions, None, 100)
            .expect("audit");
        let verdicts: Vec<&str> = audit
            .events
            .iter()
            .map(|(_, e)| e.verdict.as_str())
            .collect();
        assert!(
            verdicts.contains(&"added") && verdicts.contains(&"disabled"),
            "the history stays: {verdicts:?}"
        );
    }
    let backup = dir.path().join(format!("{}.v1.bak", Store::FILE_NAME));
    assert_eq!(
        fs::read(&backup).expect("a backup copy"),
        original,
        "the backup is the file as the old release left it"
    );
    assert_eq!(
        fs::metadata(&backup).expect("backup").permissions().mode() & 0o777,
        0o600
    );
    // Opening again is a plain open: no second migration, no second backup.
    fs::remove_file(&backup).expect("remove backup");
    drop(Store::open(dir.path()).expect("reopen"));
    assert!(!backup.exists(), "a current file is not migrated again");
    let keys = xdpgate::decisions::box_key::load_or_create(&dir.path().join("box.key"))
        .expect("the server key of the old release loads");
    assert_eq!(
        fs::read(dir.path().join("box.key")).expect("key"),
        key_before,
        "and is not replaced"
    );
    drop(keys);
}
