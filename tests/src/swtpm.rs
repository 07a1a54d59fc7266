//! A software TPM 2.0 (Debian's `swtpm`) for a client namespace: one per simulated device,
//! on TCP `127.0.0.1:PORT` inside that namespace (tss-esapi's swtpm TCTI speaks TCP only),
//! with its own state folder. Killed and its state deleted on drop; [`Swtpm::restart`] keeps
//! the state (the same TPM after a reboot).
use std::{path::PathBuf, time::Duration};

use crate::{NetNs, Proc, wait_for};

/// A running swtpm.
pub struct Swtpm {
    ns_name: String,
    port: u16,
    state: PathBuf,
    proc: Option<Proc>,
}

impl Swtpm {
    /// Starts a fresh TPM (new seeds: another device) in `ns` on `port` (and `port + 1` for
    /// its control channel). Panics, naming the package, when `swtpm` is missing.
    pub fn start(ns: &NetNs, port: u16) -> Swtpm {
        let state = std::env::temp_dir().join(format!(
            "xdpgate-swtpm-{}-{}-{port}",
            std::process::id(),
            ns.name()
        ));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state)
            .unwrap_or_else(|e| panic!("creating {}: {e}", state.display()));
        let mut tpm = Swtpm {
            ns_name: ns.name().to_owned(),
            port,
            state,
            proc: None,
        };
        tpm.launch(ns);
        tpm
    }

    fn launch(&mut self, ns: &NetNs) {
        assert_eq!(
            ns.name(),
            self.ns_name,
            "swtpm restarted in another namespace"
        );
        let found = std::process::Command::new("swtpm")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "swtpm is not installed: apt-get install swtpm swtpm-tools (cargo xtask setup does)"
        );
        let tpmstate = format!("dir={}", self.state.display());
        let server = format!("type=tcp,port={},bindaddr=127.0.0.1", self.port);
        let ctrl = format!("type=tcp,port={},bindaddr=127.0.0.1", self.port + 1);
        let child = ns.spawn(&[
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            &tpmstate,
            "--server",
            &server,
            "--ctrl",
            &ctrl,
            "--flags",
            "not-need-init,startup-clear",
        ]);
        self.proc = Some(Proc(child));
        let probe = format!("</dev/tcp/127.0.0.1/{}", self.port);
        let up = wait_for(Duration::from_secs(5), || {
            ns.try_exec(&["bash", "-c", &probe]).status.success()
        });
        assert!(
            up,
            "swtpm did not listen on 127.0.0.1:{} in {}",
            self.port, self.ns_name
        );
    }

    /// Stops and starts it again over the same state (the same TPM, like after a reboot).
    pub fn restart(&mut self, ns: &NetNs) {
        self.proc = None;
        self.launch(ns);
    }

    /// The TCTI string for tss-esapi (and `XDPGATE_TCTI`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
