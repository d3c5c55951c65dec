//! Stopping cleanly: Ctrl-C (or a time limit) tells every task to finish its batch and stop.

use std::time::Duration;

use tokio::sync::watch;

/// A shutdown signal many tasks can wait on.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A signal that fires on Ctrl-C, or after `limit` if given.
    pub fn on_ctrl_c(limit: Option<Duration>) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            match limit {
                Some(limit) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        () = tokio::time::sleep(limit) => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            let _ = tx.send(true);
        });
        Self { rx }
    }

    /// A signal that fires when the returned sender sends `true` (or is dropped without
    /// sending, which leaves it unfired).
    pub fn manual() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    /// Whether the signal fired.
    pub fn fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once the signal fired.
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}
