//! Listens for the server-wide shutdown signal (the mini-redis pattern).

use tokio::sync::broadcast;

/// A task's view of the shutdown broadcast. The server signals by dropping the sender, so
/// every receiver, including ones subscribed late, sees it.
#[derive(Debug)]
pub(crate) struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    pub(crate) fn new(notify: broadcast::Receiver<()>) -> Shutdown {
        Shutdown { is_shutdown: false, notify }
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the signal; returns at once if it was already seen.
    pub(crate) async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}
