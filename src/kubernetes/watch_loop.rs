//! The restartable watch loop both watches run (the pods, and the
//! StatefulSet): a kube-rs `watcher` stream whose events go to the watch's
//! [`WatchHandler`]; when the stream fails (or ends) the handler is told
//! why, to count, log and report it, and after kube-rs's default backoff
//! the watch is started afresh.
//!
//! Afresh, and so with a complete re-list, after every error: kube-rs
//! would otherwise resume some failures silently, and a resumed watch that
//! sees no change produces no event, so the daemon could not tell
//! "recovered" from "still failing". A complete list is that proof, and
//! costs one LIST of the watched objects per failure. A 410 Expired is one
//! such error.

use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use super::watch_error::WatchStop;

/// Longest pause between attempts, should the backoff ever end.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one watch does with what its stream brings.
pub trait WatchHandler<K> {
    /// One event from the stream.
    fn event(&mut self, event: Event<K>);

    /// The stream stopped (counted by `stop.reason()`, logged, reported by
    /// the handler); the watch restarts after the backoff.
    fn stopped(&mut self, stop: &WatchStop);

    /// The watch is being started again after a stop.
    fn restarting(&mut self) {}

    /// While the handler has work left over (a write that failed), how
    /// long to wait for the next event before [`WatchHandler::retry`].
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Try the left-over work again.
    fn retry(&mut self) {}
}

/// Watch `api` with `config` for ever, feeding `handler`.
pub async fn run<K, H>(api: Api<K>, config: watcher::Config, mut handler: H)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    H: WatchHandler<K>,
{
    run_streams(
        || watcher::watcher(api.clone(), config.clone()),
        &mut DefaultBackoff::default(),
        &mut handler,
    )
    .await
}

/// The loop itself, over any source of watcher streams: `start` is called
/// for the first stream and again on every restart.
async fn run_streams<K, S, H>(
    mut start: impl FnMut() -> S,
    backoff: &mut impl Backoff,
    handler: &mut H,
) where
    S: Stream<Item = watcher::Result<Event<K>>>,
    H: WatchHandler<K>,
{
    let mut first = true;
    loop {
        if !first {
            handler.restarting();
        }
        first = false;
        let mut stream = std::pin::pin!(start());
        let stop = loop {
            let next = match handler.retry_after() {
                Some(pause) => tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::time::sleep(pause) => {
                        handler.retry();
                        continue;
                    }
                },
                None => stream.next().await,
            };
            match next {
                Some(Ok(event)) => {
                    // A complete list is the proof the API works again.
                    if matches!(event, Event::InitDone) {
                        backoff.reset();
                    }
                    handler.event(event);
                }
                Some(Err(e)) => break WatchStop::Failed(e),
                None => break WatchStop::Ended,
            }
        };
        handler.stopped(&stop);
        let pause = backoff.next().unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream::{self, BoxStream};
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;

    type Log = Arc<Mutex<Vec<String>>>;

    fn note(log: &Log, what: impl Into<String>) {
        log.lock().unwrap().push(what.into());
    }

    /// Writes down what the loop asks of it. It has `retries` pieces of
    /// left-over work, and says so on `idle` once they are done.
    struct Recorder {
        log: Log,
        retries: u32,
        idle: Option<oneshot::Sender<()>>,
    }

    impl WatchHandler<&'static str> for Recorder {
        fn event(&mut self, event: Event<&'static str>) {
            note(
                &self.log,
                match event {
                    Event::Init => "init".into(),
                    Event::InitApply(o) => format!("list {o}"),
                    Event::InitDone => "done".into(),
                    Event::Apply(o) => format!("apply {o}"),
                    Event::Delete(o) => format!("delete {o}"),
                },
            );
        }
        fn stopped(&mut self, stop: &WatchStop) {
            note(&self.log, format!("stopped {}", stop.reason()));
        }
        fn restarting(&mut self) {
            note(&self.log, "restart");
        }
        fn retry_after(&self) -> Option<Duration> {
            (self.retries > 0).then_some(Duration::from_millis(1))
        }
        fn retry(&mut self) {
            note(&self.log, "retry");
            self.retries -= 1;
            if self.retries == 0
                && let Some(idle) = self.idle.take()
            {
                let _ = idle.send(());
            }
        }
    }

    /// A backoff that does not wait, and writes down its use.
    struct NoWait(Log);

    impl Iterator for NoWait {
        type Item = Duration;
        fn next(&mut self) -> Option<Duration> {
            note(&self.0, "back off");
            Some(Duration::ZERO)
        }
    }

    impl Backoff for NoWait {
        fn reset(&mut self) {
            note(&self.0, "reset");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_stop_is_reported_then_the_watch_starts_afresh() {
        type Item = watcher::Result<Event<&'static str>>;
        let log = Log::default();
        let mut starts = 0;
        let start = || -> BoxStream<'static, Item> {
            starts += 1;
            match starts {
                1 => stream::iter([
                    Ok(Event::Init),
                    Ok(Event::InitApply("a")),
                    Ok(Event::InitDone),
                    Ok(Event::Apply("b")),
                    Err(watcher::Error::NoResourceVersion),
                    // Never read: a stream is dropped at its first error.
                    Ok(Event::Delete("a")),
                ])
                .boxed(),
                2 => stream::iter([Ok(Event::Apply("c"))]).boxed(),
                // Then a watch that stays quiet: the left-over work is
                // retried meanwhile.
                _ => stream::pending().boxed(),
            }
        };
        let (idle_tx, idle_rx) = oneshot::channel();
        let mut handler = Recorder {
            log: log.clone(),
            retries: 2,
            idle: Some(idle_tx),
        };
        let mut backoff = NoWait(log.clone());
        tokio::select! {
            _ = run_streams(start, &mut backoff, &mut handler) => {
                panic!("the loop returned")
            }
            _ = idle_rx => {}
        }
        assert_eq!(
            *log.lock().unwrap(),
            [
                "init",
                "list a",
                "reset",
                "done",
                "apply b",
                "stopped bad_response",
                "back off",
                "restart",
                "apply c",
                "stopped stream_ended",
                "back off",
                "restart",
                "retry",
                "retry",
            ]
        );
        assert_eq!(starts, 3);
    }
}
