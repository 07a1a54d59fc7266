//! The one thread that owns the BPF maps. Everything else sends it jobs through a channel,
//! so no handler ever holds map handles (or a lock over them) across an await.
use tokio::sync::{mpsc, oneshot};

use super::{GateError, GateMaps, maps::KernelOpening, maps::OpeningsReader};

type Job = Box<dyn FnOnce(&mut GateMaps) + Send>;
type ReadJob = Box<dyn FnOnce(&OpeningsReader) + Send>;

/// Depth of the job queue; senders wait when it is full (back-pressure).
const QUEUE_DEPTH: usize = 1024;

/// Cheap, cloneable handle to the map owner.
#[derive(Clone)]
pub struct GateHandle {
    jobs: mpsc::Sender<Job>,
    /// Walks of the openings maps, on their own thread (`None`: on the owner's).
    walks: Option<mpsc::Sender<ReadJob>>,
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
        self.jobs
            .send(job)
            .await
            .map_err(|_| GateError::OwnerGone)?;
        answer.await.map_err(|_| GateError::OwnerGone)
    }

    /// Every opening the kernel holds, read on the reader thread: grants and revocations
    /// queued on the owner meanwhile are not held up by the walk. An entry written during
    /// the walk may or may not be in it (callers tolerate both, see `Openings::sweep`).
    pub async fn walk_openings(&self) -> Result<Vec<KernelOpening>, GateError> {
        let Some(walks) = &self.walks else {
            return self.run(|maps| maps.openings()).await?;
        };
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |reader| {
            let _ = reply.send(reader.openings());
        });
        walks.send(job).await.map_err(|_| GateError::OwnerGone)?;
        answer.await.map_err(|_| GateError::OwnerGone)?
    }
}

/// Starts the owner thread; it stops when every handle is dropped.
pub fn spawn_owner(mut maps: GateMaps) -> Result<GateHandle, GateError> {
    let walks = match maps.take_reader() {
        Some(reader) => {
            let (walks, mut queue) = mpsc::channel::<ReadJob>(16);
            std::thread::Builder::new()
                .name("xdpgate-walk".into())
                .spawn(move || {
                    while let Some(job) = queue.blocking_recv() {
                        job(&reader);
                    }
                })
                .map_err(|source| GateError::Io {
                    what: "starting the map reader thread".into(),
                    source,
                })?;
            Some(walks)
        }
        None => None,
    };
    let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE_DEPTH);
    std::thread::Builder::new()
        .name("xdpgate-maps".into())
        .spawn(move || {
            while let Some(job) = queue.blocking_recv() {
                job(&mut maps);
            }
        })
        .map_err(|source| GateError::Io {
            what: "starting the map owner thread".into(),
            source,
        })?;
    Ok(GateHandle { jobs, walks })
}
