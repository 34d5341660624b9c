//! The HTTP side: a minimal `GET /metrics` responder, one request per connection, bounded
//! in size, time and concurrency.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Exporter;

impl Exporter {
    /// Answers `GET /metrics` on `listener` until `shutdown` completes.
    pub async fn serve(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        if let Ok(listen) = listener.local_addr()
            && exposed(listen.ip())
        {
            tracing::warn!(
                %listen,
                "the metrics port listens beyond loopback and asks no password (neither --requirepass nor protected \
                 mode applies to it): anyone who can reach it reads this node's counts, offsets and peers' ids, \
                 though no message; listen on 127.0.0.1, or keep the port behind a firewall"
            );
        }
        // Dropped, and so stopped, when this returns.
        let _counting = self.count_leader_changes();
        let exporter = Arc::new(self);
        let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES_IN_FLIGHT));
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: the client server matters more; wait.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = Arc::clone(&scrapes).try_acquire_owned() else { continue };
                let exporter = Arc::clone(&exporter);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(SCRAPE_DEADLINE, answer(stream, &exporter)).await;
                    drop(permit);
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
    }
}

/// Whether a metrics port bound to `listen` can be reached from other machines: Prometheus
/// scrapes without credentials, so nothing but the address keeps others from it.
pub(super) fn exposed(listen: IpAddr) -> bool {
    !crate::server::is_loopback(listen)
}

/// Scrapes answered at once; more are closed unanswered.
const MAX_SCRAPES_IN_FLIGHT: usize = 8;
/// A request head larger than this is not a scrape.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scraper that takes longer than this to send its request and read the reply is dropped.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

async fn answer(mut stream: TcpStream, exporter: &Exporter) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = request_line.split(|&b| b == b' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", exporter.render()),
        (b"GET", _) => ("404 Not Found", "text/plain", "msglog serves only /metrics here\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_string()),
    };
    let mut reply = String::with_capacity(body.len() + 128);
    let _ = write!(
        reply,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
