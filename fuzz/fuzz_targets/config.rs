//! Config parser (`config::Config::parse`, TOML + validation with line numbers) on arbitrary
//! text. Checks: no panic (also while rendering the error with its line and column), the same
//! text always gives the same answer, and an accepted config's servers have distinct names
//! and ids.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xdpgate::config::{Config, IpNet};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match Config::parse(text, path) {
        Ok(config) => {
            let again = Config::parse(text, path)
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.to_string());
            assert_eq!(
                again,
                Ok(format!("{config:?}")),
                "parsing is not deterministic"
            );
            for (i, a) in config.servers.iter().enumerate() {
                for b in &config.servers[i + 1..] {
                    assert!(
                        a.name != b.name && a.id != b.id,
                        "duplicate server {a:?} / {b:?}"
                    );
                }
            }
        }
        Err(err) => {
            let first = err.to_string();
            let again = Config::parse(text, path)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(again, Err(first), "parsing is not deterministic");
        }
    }
    for line in text.lines().take(8) {
        let _ = line.parse::<IpNet>();
    }
});
