//! [`Projections`]: several projections (one per stream) run and stopped together.

use std::future::Future;

use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Stop;

/// Projections running as tasks of their own, stopped together: at a shutdown, or at the
/// first that fails.
pub struct Projections<E> {
    tasks: JoinSet<Result<(), E>>,
    stop: watch::Sender<bool>,
}

impl<E: Send + 'static> Default for Projections<E> {
    fn default() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }
}

impl<E: Send + 'static> Projections<E> {
    /// Starts `projection` with the signal that stops them all.
    pub fn spawn<F>(&mut self, projection: impl FnOnce(Stop) -> F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let stop = Stop(self.stop.subscribe());
        self.tasks.spawn(projection(stop));
    }

    /// Waits until `shutdown` completes, or every projection has returned (caught up), or
    /// one has failed; then stops the others and waits for them. The first error is returned;
    /// a projection that panicked is reported through `panicked`.
    pub async fn until(
        mut self,
        shutdown: impl Future<Output = ()>,
        panicked: impl Fn(String) -> E,
    ) -> Result<(), E> {
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        let mut result = Ok(());
        loop {
            let joined = tokio::select! {
                () = &mut shutdown => break,
                joined = self.tasks.join_next() => joined,
            };
            match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    result = Err(e);
                    break;
                }
                Some(Err(e)) => {
                    result = Err(panicked(e.to_string()));
                    break;
                }
            }
        }
        self.stop.send_replace(true);
        while let Some(joined) = self.tasks.join_next().await {
            if let (Ok(Err(e)), Ok(())) = (joined, &result) {
                result = Err(e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A projection that runs until stopped, then says so.
    async fn until_stopped(stop: Stop) -> Result<(), String> {
        stop.wait().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_shutdown_stops_every_projection() {
        let mut projections = Projections::default();
        projections.spawn(until_stopped);
        projections.spawn(until_stopped);
        let done = projections.until(async {}, |e| e);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), done).await;
        assert_eq!(stopped, Ok(Ok(())));
    }

    #[tokio::test]
    async fn the_first_failure_stops_the_others_and_is_returned() {
        let mut projections = Projections::default();
        projections.spawn(until_stopped);
        projections.spawn(|_| async { Err("the store is gone".to_owned()) });
        let done = projections.until(std::future::pending(), |e| e);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), done).await;
        assert_eq!(stopped, Ok(Err("the store is gone".to_owned())));
    }

    #[tokio::test]
    async fn projections_that_all_caught_up_end_the_run() {
        let mut projections: Projections<String> = Projections::default();
        projections.spawn(|_| async { Ok(()) });
        projections.spawn(|_| async { Ok(()) });
        let done = projections.until(std::future::pending(), |e| e);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), done).await;
        assert_eq!(stopped, Ok(Ok(())));
    }
}
