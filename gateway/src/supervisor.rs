//! `xdpgate run`: one host running both roles. The controller runs in this (privileged)
//! process; the web front runs as a child process that drops to the unprivileged
//! `[web].user` right after binding, and is restarted if it dies.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{process::Command, sync::watch};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    controller::{self, ControllerError},
};

/// How long to wait before restarting a web front that exited.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// How long the web front gets to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors of `xdpgate run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `xdpgate run` needs a `[web]` section.
    #[error("{0}: `xdpgate run` needs a [web] section (or run `xdpgate controller` alone)")]
    NoWeb(PathBuf),
    /// The two sockets must be the same file.
    #[error("approvals.front_socket ({0}) and web.front_socket ({1}) must be the same path")]
    SocketMismatch(PathBuf, PathBuf),
    /// Our own executable could not be found.
    #[error("finding the xdpgate executable: {0}")]
    Exe(std::io::Error),
    /// The controller failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// Runs controller and web front until SIGINT/SIGTERM.
pub async fn run(config_path: &Path, log_filter: &str, log_format: &str) -> Result<(), RunError> {
    let config = Config::load(config_path)?;
    let web = config
        .web
        .clone()
        .ok_or_else(|| RunError::NoWeb(config_path.to_owned()))?;
    if config.approvals.front_socket != web.front_socket {
        return Err(RunError::SocketMismatch(
            config.approvals.front_socket.clone(),
            web.front_socket,
        ));
    }
    let exe = std::env::current_exe().map_err(RunError::Exe)?;
    let (stop, stopped) = watch::channel(false);
    let supervisor = tokio::spawn(supervise_web(
        exe,
        config_path.to_owned(),
        [log_filter.to_owned(), log_format.to_owned()],
        stopped,
    ));
    let result = controller::run(config, Some(config_path.to_owned())).await;
    let _ = stop.send(true);
    if let Err(err) = supervisor.await {
        error!(error = %err, "web front supervisor failed");
    }
    Ok(result?)
}

async fn supervise_web(
    exe: PathBuf,
    config: PathBuf,
    log: [String; 2],
    mut stop: watch::Receiver<bool>,
) {
    let [log_filter, log_format] = log;
    loop {
        let mut command = Command::new(&exe);
        command
            .args([
                "--log",
                &log_filter,
                "--log-format",
                &log_format,
                "web",
                "--config",
            ])
            .arg(&config)
            .kill_on_drop(true);
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe; it makes the web front die with this process even on SIGKILL.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                error!(error = %err, "cannot start the web front");
                return;
            }
        };
        info!(pid = child.id(), "web front started");
        tokio::select! {
            status = child.wait() => {
                warn!(?status, "web front exited; restarting");
                tokio::select! {
                    () = tokio::time::sleep(RESTART_DELAY) => continue,
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => {
                terminate(&mut child).await;
                return;
            }
        }
    }
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        warn!("web front did not stop in time; killing it");
        let _ = child.kill().await;
    }
}
