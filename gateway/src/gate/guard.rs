//! Keeps the gate attached: compares what the kernel has on each interface now with the
//! controller's program, re-pins a link whose pin was removed from outside (`xdpgate detach`)
//! and re-attaches when the link itself was detached, reporting an interface as not serving
//! when that fails.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{Ebpf, programs::links::FdLink};
use tracing::{error, info, warn};

use super::{
    GateError,
    kernel_xdp::{self, KernelXdp},
    loader::{self, Attachment},
};
use crate::config::XdpModeSetting;

/// How often the kernel state is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The state of one guarded interface after the latest check.
#[derive(Clone, Debug)]
pub struct InterfaceStatus {
    /// Interface name.
    pub interface: String,
    /// How it was attached (`native`, `generic`, `kept`).
    pub mode: String,
    /// What the kernel has attached now.
    pub kernel: KernelXdp,
    /// The controller's program is attached and its link pinned.
    pub serving: bool,
    /// Why not serving, or what was repaired last.
    pub note: String,
}

struct Guarded {
    status: InterfaceStatus,
    link: Option<FdLink>,
}

struct Inner {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    mode: XdpModeSetting,
    prog_id: u32,
    interfaces: Vec<Guarded>,
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct LinkGuard {
    inner: Arc<Mutex<Inner>>,
}

impl LinkGuard {
    /// Takes ownership of the loaded object and the links `attach_all` made.
    pub fn new(
        mut ebpf: Ebpf,
        pin_dir: PathBuf,
        mode: XdpModeSetting,
        links: Vec<(Attachment, FdLink)>,
    ) -> Result<Self, GateError> {
        let prog_id = loader::program(&mut ebpf)?.info()?.id();
        let interfaces = links
            .into_iter()
            .map(|(attachment, link)| Guarded {
                status: InterfaceStatus {
                    interface: attachment.interface,
                    mode: attachment.mode,
                    kernel: KernelXdp::Attached {
                        prog_id,
                        mode: "unknown",
                    },
                    serving: true,
                    note: String::new(),
                },
                link: Some(link),
            })
            .collect();
        let guard = Self {
            inner: Arc::new(Mutex::new(Inner {
                ebpf,
                pin_dir,
                mode,
                prog_id,
                interfaces,
            })),
        };
        guard.check();
        Ok(guard)
    }

    /// Asks the kernel about every interface, repairs what it can, and returns the result.
    pub fn check(&self) -> Vec<InterfaceStatus> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner {
            ebpf,
            pin_dir,
            mode,
            prog_id,
            interfaces,
        } = &mut *inner;
        for guarded in interfaces.iter_mut() {
            check_one(ebpf, pin_dir, *mode, *prog_id, guarded);
        }
        interfaces.iter().map(|g| g.status.clone()).collect()
    }

    /// Checks every `CHECK_INTERVAL` until the task is aborted.
    pub async fn watch(self) {
        let mut ticker = tokio::time::interval(CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let guard = self.clone();
            if tokio::task::spawn_blocking(move || guard.check())
                .await
                .is_err()
            {
                error!("the link check panicked");
            }
        }
    }
}

fn check_one(
    ebpf: &mut Ebpf,
    pin_dir: &std::path::Path,
    mode: XdpModeSetting,
    prog_id: u32,
    guarded: &mut Guarded,
) {
    let interface = guarded.status.interface.clone();
    let was_serving = guarded.status.serving;
    let kernel = match kernel_xdp::query(&interface) {
        Ok(kernel) => kernel,
        Err(err) => {
            set(
                guarded,
                false,
                err.to_string(),
                KernelXdp::None,
                was_serving,
            );
            return;
        }
    };
    let ours = matches!(kernel, KernelXdp::Attached { prog_id: id, .. } if id == prog_id);
    if ours {
        let pinned = loader::link_pin_path(pin_dir, &interface).exists();
        if !pinned {
            warn!(interface = %interface, "the gate's link pin was removed from outside; pinning it again");
            match guarded
                .link
                .take()
                .map(|link| loader::repin(link, pin_dir, &interface))
            {
                Some(Ok(link)) => guarded.link = Some(link),
                Some(Err(err)) => {
                    let note =
                        format!("link pin removed from outside and pinning again failed: {err}");
                    return set(guarded, false, note, kernel, was_serving);
                }
                None => {
                    return set(
                        guarded,
                        false,
                        "link pin removed from outside".into(),
                        kernel,
                        was_serving,
                    );
                }
            }
        }
        let note = if pinned {
            String::new()
        } else {
            "link pin was removed from outside; pinned again".into()
        };
        return set(guarded, true, note, kernel, was_serving);
    }
    warn!(interface = %interface, kernel = %kernel, "the XDP gate was removed from outside; attaching it again");
    // Closing a link that the kernel already detached releases nothing else.
    guarded.link = None;
    let attached =
        loader::program(ebpf).and_then(|xdp| loader::attach_fresh(xdp, pin_dir, &interface, mode));
    match attached {
        Ok((mode_name, link)) => {
            info!(interface = %interface, mode = mode_name, "the XDP gate is attached again");
            guarded.link = Some(link);
            guarded.status.mode = mode_name.to_owned();
            let now = kernel_xdp::query(&interface).unwrap_or(KernelXdp::None);
            let note = format!("removed from outside ({kernel}); attached again");
            set(guarded, true, note, now, was_serving);
        }
        Err(err) => {
            let note = format!("removed from outside ({kernel}); attaching again failed: {err}");
            set(guarded, false, note, kernel, was_serving);
        }
    }
}

fn set(guarded: &mut Guarded, serving: bool, note: String, kernel: KernelXdp, was_serving: bool) {
    if was_serving && !serving {
        error!(interface = %guarded.status.interface, reason = %note, "the gate is not serving on this interface");
    } else if serving && !was_serving {
        info!(interface = %guarded.status.interface, "the gate is serving on this interface again");
    }
    guarded.status.serving = serving;
    guarded.status.kernel = kernel;
    if !note.is_empty() || serving {
        guarded.status.note = note;
    }
}
