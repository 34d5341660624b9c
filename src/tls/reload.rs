//! Certificate reload on SIGHUP (docs/SECURITY.md): renewed certificates take effect
//! without a restart, for connections accepted from then on.
//!
//! Both ports' acceptors are swapped: the client port's, and the gRPC port's (its
//! certificate, and the CA it checks callers and node certificates against). What this node
//! presents when it calls peers is tonic's `ClientTlsConfig`, fixed into each channel when
//! it is built, so outgoing calls (following, forwarding, the quorum) keep the certificate
//! the node started with until it restarts.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ClientPortTls, GrpcTls, NodeTls, TlsError, TlsFiles, load_node};

/// What a reload reads, and the acceptors it replaces.
#[derive(Clone)]
pub struct CertificateReload {
    files: TlsFiles,
    node_id: Option<String>,
    client_port: ClientPortTls,
    grpc: Option<GrpcTls>,
}

impl CertificateReload {
    /// Reloads the files `tls` was loaded from into its acceptors, which each port reads
    /// per accept.
    pub fn new(tls: &NodeTls) -> CertificateReload {
        CertificateReload {
            files: tls.files.clone(),
            node_id: tls.node_id.clone(),
            client_port: tls.client_port.clone(),
            grpc: tls.grpc.clone(),
        }
    }

    /// Loads and checks all the files as at start; only if every one is usable do the ports
    /// take the new certificates. Returns the names the new certificate carries.
    pub fn reload(&self) -> Result<Vec<String>, TlsError> {
        let Some(loaded) = load_node(&self.files, self.node_id.as_deref())? else {
            return Err(TlsError::Combination("no TLS files to reload"));
        };
        self.client_port.replace(loaded.client_port.current());
        if let (Some(grpc), Some(renewed)) = (&self.grpc, &loaded.grpc) {
            grpc.replace(renewed);
        }
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
            let reloading = reload.clone();
            let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
            match reloaded {
                Ok(Ok(names)) => tracing::info!(
                    names = %names.join(","),
                    "SIGHUP: reloaded the TLS certificate; new connections to the client port{} use it \
                     (calls this node makes to its peers keep their certificate until a restart)",
                    if reload.grpc.is_some() { " and the gRPC port" } else { "" }
                ),
                Ok(Err(err)) => tracing::error!("SIGHUP: keeping the TLS certificates in use: {err}"),
                Err(err) => tracing::error!("SIGHUP: the certificate reload failed: {err}"),
            }
        }
    }))
}
