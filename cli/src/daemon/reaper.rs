//! Container exits seen from the daemon: waiting for one without a thread per container
//! ([`wait_for_exit`]), removing `--rm` containers when they end ([`Reaper`], Docker's
//! daemon-side auto-remove, so it happens even when the client is gone), and remembering how
//! an auto-removed container ended so that `wait` and a foreground `run --rm` can still
//! report its exit code after it is gone.
//!
//! Readers that must see a container's last output (a foreground `run`, `logs -f`) take a
//! [`Hold`] on it; the removal waits until the holds are released (or [`HOLD_TIMEOUT`]), so
//! the log is not deleted under them.

use super::netattach::ContainerNetworks;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use shoal_runtime::{Container, ContainerError, Runtime, State, Status};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::blocking;
use super::error::{ApiError, Result};

/// How long a removal waits for readers of the container's last output. Long enough for a
/// reader to send what is left of a log over a slow link; short enough that a client that
/// stopped reading cannot keep an exited `--rm` container around.
const HOLD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the exit of an auto-removed container stays known. A client that raced the
/// removal (`wait` just after the exit) asks within milliseconds; a minute covers slow ones
/// without letting the record grow with every container ever run.
const EXIT_RECORD_TTL: Duration = Duration::from_secs(60);

/// Waits, without blocking a thread, until the container's process has ended (at once when
/// it is not running). After this, `Runtime::wait` returns without blocking.
pub async fn wait_for_exit(runtime: &Runtime, id: &str) -> Result<()> {
    let fd = {
        let runtime = runtime.clone();
        let id = id.to_string();
        blocking(move || Ok(runtime.exit_fd(&id)?)).await?
    };
    let Some(fd) = fd else {
        return Ok(());
    };
    let wait_error = |source| ApiError::WaitExit {
        id: id.to_string(),
        source,
    };
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, so the descriptor stays open and
    // refers to the same pidfd until the `AsyncFd` is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|err| wait_error(err.into_parts().1))?;
    // A pidfd becomes readable once its process has exited and stays so: no need to clear
    // readiness or loop.
    let _ready = fd.readable().await.map_err(wait_error)?;
    Ok(())
}

/// Removes `--rm` containers when they exit and remembers how they ended.
#[derive(Debug)]
pub struct Reaper {
    runtime: Runtime,
    /// A removed container's network attachment goes with it.
    networks: Arc<ContainerNetworks>,
    /// Container id → number of readers that must see its last output before removal.
    holds: watch::Sender<HashMap<String, usize>>,
    /// Auto-removals in progress or recently done, by container id (shared with the tasks
    /// that expire the records).
    removals: Arc<Mutex<HashMap<String, Removal>>>,
    /// Containers with a watcher task, so that a second `start` adds no second watcher.
    watched: Mutex<HashSet<String>>,
    /// The watcher and record-expiry tasks, aborted when the daemon stops.
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Debug)]
struct Removal {
    /// Container name, so that `wait NAME` finds a removed container too.
    name: String,
    progress: watch::Sender<Progress>,
}

/// Where an auto-removal is.
#[derive(Debug, Clone)]
enum Progress {
    /// Waiting for the final state.
    Waiting,
    /// The final state is known; the removal is under way.
    Exited(State),
    /// The container is gone.
    Removed(State),
    /// The final state could not be read (the container was removed by someone else).
    Failed,
}

/// A reader's claim on a container's log: the container is not auto-removed while held.
#[derive(Debug)]
pub struct Hold {
    reaper: Arc<Reaper>,
    id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.reaper.holds.send_modify(|holds| {
            if let Some(n) = holds.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    holds.remove(&self.id);
                }
            }
        });
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is a single insert
    // or remove.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reaper {
    /// A reaper for the containers of `runtime`.
    pub fn new(runtime: Runtime, networks: Arc<ContainerNetworks>) -> Arc<Reaper> {
        Arc::new(Reaper {
            runtime,
            networks,
            holds: watch::Sender::new(HashMap::new()),
            removals: Arc::new(Mutex::new(HashMap::new())),
            watched: Mutex::new(HashSet::new()),
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    /// Takes over the `--rm` containers a previous daemon left: watches the running ones and
    /// removes those that ended while no daemon ran (`Runtime::open` may have done so
    /// already; removing is idempotent). Created ones stay, as with Docker.
    pub async fn adopt(self: &Arc<Self>) -> Result<()> {
        let runtime = self.runtime.clone();
        let all = blocking(move || Ok(runtime.list(true)?)).await?;
        for c in all {
            if c.spec.auto_remove && c.state.status != Status::Created {
                tracing::info!(container.id = %c.id, status = c.state.status.as_str(), "adopting auto-remove container");
                self.watch(&c);
            }
        }
        Ok(())
    }

    /// Claims the container's log until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, id: &str) -> Hold {
        self.holds
            .send_modify(|holds| *holds.entry(id.to_string()).or_default() += 1);
        Hold {
            reaper: Arc::clone(self),
            id: id.to_string(),
        }
    }

    /// Removes the container (an auto-remove one, started) once it exits. Idempotent.
    pub fn watch(self: &Arc<Self>, c: &Container) {
        if !locked(&self.watched).insert(c.id.clone()) {
            return;
        }
        let reaper = Arc::clone(self);
        let id = c.id.clone();
        let name = c.name.clone();
        self.spawn(async move {
            if let Err(err) = wait_for_exit(&reaper.runtime, &id).await {
                tracing::warn!(container.id = %id, error = %err, "cannot wait for auto-remove container");
            } else {
                reaper.released(&id).await;
                match reaper.reap(&id, &name).await {
                    Ok(_) | Err(ApiError::Container(ContainerError::NotFound(_))) => {}
                    Err(err) => {
                        tracing::warn!(container.id = %id, error = %err, "auto-remove failed")
                    }
                }
            }
            locked(&reaper.watched).remove(&id);
        });
    }

    /// Waits until no reader holds the container's log, or [`HOLD_TIMEOUT`].
    async fn released(&self, id: &str) {
        let mut holds = self.holds.subscribe();
        let free = holds.wait_for(|holds| !holds.contains_key(id));
        if tokio::time::timeout(HOLD_TIMEOUT, free).await.is_err() {
            tracing::warn!(container.id = %id, "removing auto-remove container while a reader still holds its log");
        }
    }

    /// Records the final state of the exited container `id` (a full id; `name` lets `wait
    /// NAME` find the record), removes it, and returns that state. Concurrent calls share one
    /// removal; all return once it is done.
    pub async fn reap(&self, id: &str, name: &str) -> Result<State> {
        let (mut progress, owner) = {
            let mut removals = locked(&self.removals);
            match removals.get(id) {
                Some(removal) => (removal.progress.subscribe(), false),
                None => {
                    let (tx, rx) = watch::channel(Progress::Waiting);
                    removals.insert(
                        id.to_string(),
                        Removal {
                            name: name.to_string(),
                            progress: tx,
                        },
                    );
                    (rx, true)
                }
            }
        };
        if owner {
            return self.remove_exited(id).await;
        }
        let done = progress
            .wait_for(|p| matches!(p, Progress::Removed(_) | Progress::Failed))
            .await
            .map(|p| p.clone());
        match done {
            Ok(Progress::Removed(state)) => Ok(state),
            _ => Err(ContainerError::NotFound(id.to_string()).into()),
        }
    }

    async fn remove_exited(&self, id: &str) -> Result<State> {
        let set = |p: Progress| {
            if let Some(removal) = locked(&self.removals).get(id) {
                removal.progress.send_replace(p);
            }
        };
        let runtime = self.runtime.clone();
        let owned = id.to_string();
        let state = match blocking(move || Ok(runtime.wait(&owned)?)).await {
            Ok(state) => state,
            Err(err) => {
                set(Progress::Failed);
                self.forget_later(id);
                return Err(err);
            }
        };
        set(Progress::Exited(state.clone()));
        let runtime = self.runtime.clone();
        let owned = id.to_string();
        match blocking(move || Ok(runtime.remove(&owned, false)?)).await {
            Ok(()) | Err(ApiError::Container(ContainerError::NotFound(_))) => {
                tracing::debug!(container.id = %id, "auto-removed");
                self.networks.detach_container(id).await;
            }
            Err(err) => tracing::warn!(container.id = %id, error = %err, "auto-remove failed"),
        }
        set(Progress::Removed(state.clone()));
        self.forget_later(id);
        Ok(state)
    }

    fn forget_later(&self, id: &str) {
        let removals = Arc::clone(&self.removals);
        let id = id.to_string();
        self.spawn(async move {
            tokio::time::sleep(EXIT_RECORD_TTL).await;
            locked(&removals).remove(&id);
        });
    }

    /// The final state of an auto-removed (or being removed) container, by full id, name or
    /// id prefix; `None` when no such removal is known.
    pub async fn recorded_exit(&self, needle: &str) -> Option<State> {
        let mut progress = {
            let removals = locked(&self.removals);
            let name = needle.strip_prefix('/').unwrap_or(needle);
            removals
                .iter()
                .find(|(id, r)| id.as_str() == needle || r.name == name)
                .or_else(|| {
                    let mut matches = removals.iter().filter(|(id, _)| id.starts_with(needle));
                    match (matches.next(), matches.next()) {
                        (Some(one), None) if !needle.is_empty() => Some(one),
                        _ => None,
                    }
                })
                .map(|(_, r)| r.progress.subscribe())?
        };
        let state = progress
            .wait_for(|p| !matches!(p, Progress::Waiting))
            .await
            .ok()
            .map(|p| p.clone());
        match state {
            Some(Progress::Exited(state) | Progress::Removed(state)) => Some(state),
            _ => None,
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = locked(&self.tasks);
        // Drop the results of finished tasks so the set does not grow with every container.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Stops the watchers (the daemon is stopping; a restarted daemon adopts them again).
    pub fn shutdown(&self) {
        locked(&self.tasks).abort_all();
    }
}
