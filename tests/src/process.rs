//! Child processes of the tests: killed when dropped, stopped politely on request, and a
//! bounded poll for what they should bring about.
use std::{
    process::Child,
    thread,
    time::{Duration, Instant},
};

/// A spawned process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Sends SIGTERM (a client then tells the server it leaves) and waits up to `limit` for
    /// the process to exit; true if it did.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(0));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM: {e}"));
        wait_for(limit, || matches!(self.0.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `done` every 100 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
