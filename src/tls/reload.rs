//! Certificate reload on SIGHUP (docs/SECURITY.md): renewed certificates take effect
//! without a restart, for connections made from then on.
//!
//! Only the client port's acceptor is swapped. The gRPC port's TLS is tonic's, which takes a
//! fixed `ServerTlsConfig`/`ClientTlsConfig` when the server and channels are built, so
//! mutual TLS between nodes keeps the certificates it started with until the node restarts;
//! the reload still loads and checks `--tls-ca`, so a broken bundle is reported at once
//! rather than at the next restart.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ClientPortTls, TlsError, TlsFiles, load_node};

/// What a reload reads, and the acceptor it replaces.
pub struct CertificateReload {
    files: TlsFiles,
    client_port: ClientPortTls,
}

impl CertificateReload {
    /// Reloads `files` into `client_port`, the acceptor the client port reads per accept.
    pub fn new(files: TlsFiles, client_port: ClientPortTls) -> CertificateReload {
        CertificateReload { files, client_port }
    }

    /// Loads and checks all the files; only if every one is usable does the client port
    /// take the new certificate. Returns the names the new certificate carries.
    pub fn reload(&self) -> Result<Vec<String>, TlsError> {
        let Some(loaded) = load_node(&self.files)? else {
            return Err(TlsError::Combination("no TLS files to reload"));
        };
        self.client_port.replace(loaded.client_port.current());
        Ok(loaded.names)
    }
}

/// Reloads on every SIGHUP until `stopping` turns true. Without TLS a SIGHUP is only
/// logged: the handler is installed either way, so the signal's default action (ending the
/// process) never stops a node. The handler is installed before this returns, so a SIGHUP
/// sent once the node serves is never missed.
pub fn watch_hangup(
    reload: Option<CertificateReload>,
    mut stopping: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                received = hangup.recv() => if received.is_none() { return },
                _ = stopping.wait_for(|&stop| stop) => return,
            }
            let Some(reload) = &reload else {
                tracing::info!("SIGHUP: TLS is off, no certificates to reload");
                continue;
            };
            // Files are read off the runtime's workers: a slow disk must not stall clients.
            let files = reload.files.clone();
            let client_port = reload.client_port.clone();
            let reloaded = tokio::task::spawn_blocking(move || CertificateReload { files, client_port }.reload()).await;
            match reloaded {
                Ok(Ok(names)) => tracing::info!(
                    names = %names.join(","),
                    "SIGHUP: reloaded the TLS certificate; new client-port connections use it \
                     (the gRPC port keeps its certificates until a restart)"
                ),
                Ok(Err(err)) => tracing::error!("SIGHUP: keeping the TLS certificates in use: {err}"),
                Err(err) => tracing::error!("SIGHUP: the certificate reload failed: {err}"),
            }
        }
    }))
}
