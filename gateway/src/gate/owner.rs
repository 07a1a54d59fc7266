//! The one thread that owns the BPF maps. Everything else sends it jobs through a channel,
//! so no handler ever holds map handles (or a lock over them) across an await.
use tokio::sync::{mpsc, oneshot};

use super::{GateError, GateMaps};

type Job = Box<dyn FnOnce(&mut GateMaps) + Send>;

/// Depth of the job queue; senders wait when it is full (back-pressure).
const QUEUE_DEPTH: usize = 1024;

/// Cheap, cloneable handle to the map owner.
#[derive(Clone)]
pub struct GateHandle {
    jobs: mpsc::Sender<Job>,
}

impl GateHandle {
    /// Runs `job` on the owner thread with exclusive access to the maps and returns its result.
    pub async fn run<R, F>(&self, job: F) -> Result<R, GateError>
    where
        R: Send + 'static,
        F: FnOnce(&mut GateMaps) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |maps| {
            // The asker may have given up (timeout); nothing to do then.
            let _ = reply.send(job(maps));
        });
        self.jobs.send(job).await.map_err(|_| GateError::OwnerGone)?;
        answer.await.map_err(|_| GateError::OwnerGone)
    }
}

/// Starts the owner thread; it stops when every handle is dropped.
pub fn spawn_owner(mut maps: GateMaps) -> Result<GateHandle, GateError> {
    let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE_DEPTH);
    std::thread::Builder::new()
        .name("xdpgate-maps".into())
        .spawn(move || {
            while let Some(job) = queue.blocking_recv() {
                job(&mut maps);
            }
        })
        .map_err(|source| GateError::Io { what: "starting the map owner thread".into(), source })?;
    Ok(GateHandle { jobs })
}
