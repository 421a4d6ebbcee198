//! Everything that is not EPMD (Kubernetes discovery, the files it
//! writes, the admin endpoint) runs on a thread and tokio runtime of its
//! own, so none of it can delay an EPMD answer: a re-list of 10 000 pods
//! decodes megabytes of JSON and re-renders the hosts file, and on the
//! EPMD thread that stalled lookups for tens of milliseconds. The thread
//! also runs at a lower priority (nice +10 relative to the process), so
//! when both want the same CPU the scheduler lets EPMD answer first.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tracing::debug;

/// How many nice steps below the EPMD thread the background thread runs.
const NICE_STEPS_BELOW_EPMD: i32 = 10;

/// Lower the calling thread's priority (Linux: nice is per thread).
/// Returns the new nice value.
fn lower_this_thread() -> std::io::Result<i32> {
    let tid = rustix::thread::gettid();
    let nice = rustix::process::getpriority_process(Some(tid))?;
    let lower = (nice + NICE_STEPS_BELOW_EPMD).min(19);
    rustix::process::setpriority_process(Some(tid), lower)?;
    Ok(lower)
}

/// The background thread, running until the future its set-up returned
/// ends (tasks it spawned end with it).
#[derive(Debug)]
pub struct Background {
    thread: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError<E> {
    #[error("cannot start the background thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot start the background runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the background thread died during set-up")]
    Died,
    #[error("{0}")]
    Setup(E),
}

impl Background {
    /// Start thread `name` with a current-thread runtime and run `setup`
    /// on it. Returns once set-up is done: its error, or the running
    /// thread, which then drives the future `setup` returned (and every
    /// task spawned meanwhile) to its end.
    pub async fn spawn<S, Fut, Run, E>(name: &str, setup: S) -> Result<Background, SpawnError<E>>
    where
        S: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Run, E>>,
        Run: Future<Output = ()>,
        E: Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Only a lost scheduling preference if it fails.
                match lower_this_thread() {
                    Ok(nice) => debug!(nice, "background thread priority lowered"),
                    Err(e) => debug!(error = %e, "cannot lower the background thread's priority"),
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = done_tx.send(Err(SpawnError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match setup().await {
                        Ok(run) => {
                            if done_tx.send(Ok(())).is_ok() {
                                run.await;
                            }
                        }
                        Err(e) => {
                            let _ = done_tx.send(Err(SpawnError::Setup(e)));
                        }
                    }
                });
            })
            .map_err(SpawnError::Thread)?;
        match done_rx.await {
            Ok(Ok(())) => Ok(Background { thread }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SpawnError::Died),
        }
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn set_up_on_its_own_thread_then_runs() {
        let caller = std::thread::current().id();
        let caller_nice = rustix::process::getpriority_process(None).unwrap();
        let (tx, rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let bg = Background::spawn("test-bg", move || async move {
            let here = std::thread::current();
            assert_ne!(here.id(), caller);
            assert_eq!(here.name(), Some("test-bg"));
            let tid = rustix::thread::gettid();
            let nice = rustix::process::getpriority_process(Some(tid)).unwrap();
            assert_eq!(nice, (caller_nice + NICE_STEPS_BELOW_EPMD).min(19));
            // A task spawned during set-up runs on the background runtime.
            tokio::spawn(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            });
            Ok::<_, ()>(async move {
                let _ = stop_rx.await;
            })
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().as_deref(), Some("test-bg"));
        assert!(bg.is_running());
        stop_tx.send(()).unwrap();
        let Background { thread } = bg;
        thread.join().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_set_up_error_comes_back() {
        let r = Background::spawn("test-bg", || async {
            Err::<std::future::Ready<()>, _>("no API".to_string())
        })
        .await;
        assert!(matches!(r, Err(SpawnError::Setup(ref e)) if e == "no API"));
    }
}
