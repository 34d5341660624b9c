//! A running msglog node as a library value: [`Node::start`] opens the log, binds the client
//! and replication ports, decides the leader epoch, and serves until
//! [`RunningNode::shutdown`], which lets connections finish, stops replication and closes
//! the log. `msglog serve` is this plus flags and signals; tests start whole clusters
//! in-process and read each node's state as typed values ([`NodeStatus`]).

mod cluster;
mod config;
mod error;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::quorum::Quorum;
use crate::replication::{
    ForwardClient, ForwardConfig, PeerChannels, Replicas, Replication, ReplicationConfig, ReplicationStatus, Role,
    with_forwarding,
};
use crate::server::metrics::{ClusterFigures, Exporter, Metrics, ReplicationFigures};
use crate::server::{self, Cluster, ForwardEndpoint, Forwarding, ServerConfig};
use crate::storage::{Cleaner, Epoch, FileSystem, Lineage, Log, LogStats, Origin, RealFs};

pub use cluster::ClusterConfig;
pub(crate) use cluster::is_cluster_member;
pub use config::{NodeConfig, max_record_bytes};
pub use error::NodeError;

/// Starts nodes; see [`Node::start`].
pub struct Node;

impl Node {
    /// Opens (and locks) the log, binds both ports, and starts serving. A leader begins a
    /// new leader epoch only once nothing else can stop the start, so failed starts use up
    /// no epochs. Must be called within a multi-threaded tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
        Node::start_with_fs(config, Arc::new(RealFs)).await
    }

    /// [`Node::start`] on a file system of the caller's choosing (tests inject faults).
    pub async fn start_with_fs(config: NodeConfig, fs: Arc<dyn FileSystem>) -> Result<RunningNode, NodeError> {
        let log_config = config.log_config()?;
        config.check_retention()?;
        // Loaded first: a wrong certificate file fails the start before anything is opened.
        let tls = crate::tls::load_node(&config.tls, config.node_id.as_deref())
            .map_err(|err| NodeError::Config(err.to_string()))?;
        let grpc_tls = tls.as_ref().and_then(|tls| tls.grpc.clone());
        let grpc_client_tls = grpc_tls.as_ref().map(|tls| tls.client.clone());
        if config.cluster.is_some() {
            let Some(node_id) = &config.node_id else {
                return Err(NodeError::Config(
                    "cluster mode needs --node-id (one of the ids in --cluster, or a new one to join as a non-voter)"
                        .to_string(),
                ));
            };
            cluster::Identity::new(&config.data_dir).check_node(node_id)?;
        }
        if let Some(ip) = config.bind_source_addr {
            // Checked now rather than found out by a follower that retries forever.
            std::net::TcpListener::bind((ip, 0)).map_err(|err| {
                NodeError::Config(format!("--bind-source-addr {ip} cannot be used on this host: {err}"))
            })?;
        }
        // Opened before binding, so a second server on the same directory fails on the lock,
        // naming it, whatever its listen address.
        let max_record_bytes = log_config.max_record_bytes as usize;
        let opening = Instant::now();
        let logs = open_logs(&config.partition_dirs()?, &log_config, &fs)?;
        let (records, ids) = logs.iter().map(Log::stats).fold((0, 0), |(r, i), s| (r + s.records, i + s.ids));
        tracing::info!(
            partitions = logs.len(),
            "recovered {records} records, {ids} IDs in {:.3} s",
            opening.elapsed().as_secs_f64()
        );
        let Bound { listener, client_addr, grpc_listener, grpc_addr, metrics_listener } =
            match bind_and_lead(&config, &logs[0]).await {
                Ok(bound) => bound,
                Err(err) => {
                    close_all(logs);
                    return Err(err);
                }
            };
        let logs: Vec<Arc<Log>> = logs.into_iter().map(Arc::new).collect();
        let log = Arc::clone(&logs[0]);
        let node_id = config.node_id.clone().unwrap_or_else(|| client_addr.to_string());
        let certificate_reload = tls.as_ref().map(crate::tls::CertificateReload::new);
        let server_config = ServerConfig {
            node_id: node_id.clone(),
            fsync: config.fsync,
            max_connections: config.max_connections,
            max_message_bytes: config.max_message_bytes,
            max_buffer_bytes: config.max_buffer_bytes,
            stats_interval: config.stats_interval,
            password: config.password.clone(),
            protected_mode: config.protected_mode,
            metrics: metrics_listener.as_ref().map(|_| Arc::new(Metrics::default())),
            tls: tls.map(|tls| tls.client_port),
            serving_loops: config.serving_loops,
        };
        // Clients stop first and replication only after them: a write waiting for its
        // acknowledgements during shutdown still gets them, instead of waiting out the ack
        // timeout on a replication server that is already gone.
        let (stop_clients, clients_stopping) = watch::channel(false);
        let (stop_replication, replication_stopping) = watch::channel(false);
        let replication_config = ReplicationConfig {
            node_id: node_id.clone(),
            client_addr: client_addr.to_string(),
            role: config.role.clone(),
            max_record_bytes,
            max_fetch_streams: config.max_replication_streams,
            bind_source_addr: config.bind_source_addr,
            password: config.password.clone(),
            protected_mode: config.protected_mode,
            tls: grpc_tls.clone(),
            peers: PeerChannels::default(),
        };
        // One replication per partition, all served on one gRPC port.
        let replications: Vec<Arc<Replication>> = (0u32..)
            .zip(&logs)
            .map(|(p, log)| {
                Replication::new(p, Arc::clone(log), replication_config.clone(), replication_stopping.clone())
            })
            .collect();
        for replication in &replications {
            replication.recall_followers().map_err(NodeError::Followers)?;
        }
        let replicas = Arc::new(Replicas::default());
        replications.iter().for_each(|replication| replicas.hold(Arc::clone(replication)));
        let replication = Arc::clone(&replications[0]);
        tracing::info!(
            addr = %client_addr,
            grpc_addr = %grpc_addr,
            data_dir = %config.data_dir.display(),
            fsync = ?config.fsync,
            node_id = %node_id,
            role = replication.role(),
            following = match &config.role {
                Role::Follower { leader } => leader.as_str(),
                Role::Leader { .. } => "-",
                Role::Cluster { .. } => "(cluster mode)",
            },
            "msglog listening"
        );
        let (stop_driver, driver_stopping) = watch::channel(false);
        // Cluster mode: requests to a node that does not lead go to the one that does.
        let forward_endpoint = ForwardEndpoint::new();
        let forward_config = ForwardConfig {
            password: config.password.clone(),
            bind_source_addr: config.bind_source_addr,
            max_message_bytes: config.max_message_bytes,
        };
        let (quorum, routes) = match &config.cluster {
            Some(cluster_config) => {
                let quorum_config = cluster::quorum_config(
                    &config,
                    cluster_config,
                    &node_id,
                    grpc_addr,
                    client_addr,
                    {
                        // What each log holds records of: an empty log claims none, whatever
                        // epochs it has seen (a spare learns the cluster's epochs and copies
                        // nothing), so it may still take a dead replica's place.
                        let logs: Vec<_> = logs.iter().map(Arc::downgrade).collect();
                        crate::cluster::quorum::LogEpoch::new(move || {
                            logs.iter()
                                .map(|log| match log.upgrade() {
                                    Some(log) if log.next_offset() > 0 => log.stats().epoch,
                                    _ => 0,
                                })
                                .collect()
                        })
                    },
                    grpc_tls,
                );
                match Quorum::start_with_tls(quorum_config, grpc_client_tls.clone()).await {
                    Ok(quorum) => {
                        let routes = with_forwarding(
                            tonic::service::Routes::new(quorum.service()),
                            forward_endpoint.clone(),
                            forward_config.clone(),
                        );
                        (Some(quorum), routes)
                    }
                    Err(err) => {
                        drop((replication, replications, replicas, log));
                        close_all(logs.into_iter().filter_map(|log| Arc::try_unwrap(log).ok()).collect());
                        return Err(NodeError::Config(format!("cannot start the metadata quorum: {err}")));
                    }
                }
            }
            None => (None, tonic::service::Routes::default()),
        };
        let replication_task = tokio::spawn(Arc::clone(&replication).run(replicas, grpc_listener, routes));
        let driver_task = quorum.as_ref().zip(config.cluster.as_ref()).map(|(quorum, cluster_config)| {
            // One identity for every partition's driver: its file is written once.
            let identity = cluster::Identity::new(&config.data_dir);
            let drivers = replications.iter().map(|replication| {
                cluster::Driver::new(
                    Arc::clone(quorum),
                    Arc::clone(replication),
                    node_id.clone(),
                    cluster_config,
                    identity.clone(),
                )
            });
            tokio::spawn(cluster::run_drivers(drivers.collect(), driver_stopping))
        });
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        let metrics_task = match (metrics_listener, &server_config.metrics) {
            (Some((listener, addr)), Some(metrics)) => {
                // Every partition's log and replication: the node's figures cover all it holds.
                let weak_replications = || replications.iter().map(Arc::downgrade).collect::<Vec<_>>();
                let exporter = Exporter::new(
                    Arc::clone(metrics),
                    logs.iter().map(Arc::downgrade).collect(),
                    replication_figures(weak_replications()),
                );
                let routes: Option<Vec<_>> =
                    replications.iter().map(|replication| Cluster::routes(replication.as_ref())).collect();
                let exporter = match (&quorum, routes) {
                    (Some(quorum), Some(routes)) => exporter
                        .with_cluster(cluster_figures(weak_replications(), quorum.metadata(), node_id.clone()), routes),
                    _ => exporter,
                };
                tracing::info!(%addr, "serving Prometheus metrics at /metrics");
                let mut stopped = stop_replication.subscribe();
                Some(tokio::spawn(exporter.serve(listener, async move {
                    let _ = stopped.wait_for(|&stop| stop).await;
                })))
            }
            _ => None,
        };
        let watch_tasks: Vec<_> = replications
            .iter()
            .map(|replication| tokio::spawn(watch_followers(Arc::downgrade(replication), stop_replication.subscribe())))
            .collect();
        let hangup_task =
            crate::tls::watch_hangup(certificate_reload, stop_replication.subscribe()).map_err(NodeError::Server)?;
        let mut stopped = clients_stopping;
        let served: Vec<server::PartitionLog> = logs
            .iter()
            .zip(&replications)
            .map(|(log, replication)| {
                let cluster: Arc<dyn Cluster> = match &quorum {
                    Some(quorum) => Arc::new(cluster::Member::new(Arc::clone(replication), Arc::clone(quorum))),
                    None => Arc::clone(replication) as Arc<dyn Cluster>,
                };
                (Arc::clone(log), Some(cluster))
            })
            .collect();
        let forwarding = match (&quorum, &config.role) {
            (Some(_), &Role::Cluster { ack_timeout }) => Forwarding {
                forwarder: Some(ForwardClient::with_tls(forward_config, grpc_client_tls) as Arc<dyn server::Forwarder>),
                endpoint: Some(forward_endpoint),
                route_wait: ack_timeout,
            },
            _ => Forwarding::default(),
        };
        let server_task = tokio::spawn(server::serve(listener, served, server_config, forwarding, async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }));
        let mut cleaner_tasks = Vec::new();
        if let Some(mut settings) = config.cleaner.clone() {
            // The partitions' cleaners share the rate limit (they share the disk).
            settings.bytes_per_sec = settings.bytes_per_sec.map(|rate| (rate / logs.len() as u64).max(1));
            for (log, replication) in logs.iter().zip(&replications) {
                cleaner_tasks.extend(start_cleaner(log, settings.clone(), replication, stop_replication.subscribe())?);
            }
        }
        Ok(RunningNode {
            node_id,
            client_addr,
            grpc_addr,
            metrics_addr,
            logs,
            replications,
            stop_clients,
            stop_replication,
            server_task,
            replication_task,
            quorum,
            driver_task,
            stop_driver,
            background: metrics_task.into_iter().chain(watch_tasks).chain([hangup_task]).chain(cleaner_tasks).collect(),
        })
    }
}

/// Opens (and locks) every partition's log, in partition order; on a failure the ones
/// already open are closed again.
fn open_logs(
    dirs: &[std::path::PathBuf],
    config: &crate::storage::Config,
    fs: &Arc<dyn FileSystem>,
) -> Result<Vec<Log>, NodeError> {
    let mut logs = Vec::with_capacity(dirs.len());
    for dir in dirs {
        match Log::open_with(dir, config.clone(), Arc::clone(fs)) {
            Ok(log) => logs.push(log),
            Err(cause) => {
                close_all(logs);
                return Err(NodeError::OpenLog { dir: dir.clone(), cause });
            }
        }
    }
    share_fsyncs(&logs, dirs, config, fs.as_ref());
    Ok(logs)
}

/// Under `--fsync always`, puts a node's partition logs in one sync group, so that each
/// round of fsyncs serves all of them (see `storage::SyncGroup`). Shared rounds pay off
/// only when one call syncs them all (docs/BENCHMARKS.md, "Partition logs sharing their
/// fsyncs"): one fdatasync after another for each log was slower than each log syncing on
/// its own, so where the file system cannot batch (`FileSystem::batches_syncs`) they do not
/// share.
fn share_fsyncs(logs: &[Log], dirs: &[std::path::PathBuf], config: &crate::storage::Config, fs: &dyn FileSystem) {
    if logs.len() <= 1 || !matches!(config.fsync, crate::storage::FsyncPolicy::Always) || !fs.batches_syncs() {
        return;
    }
    let group = match crate::storage::SyncGroup::new(&dirs[0]) {
        Ok(group) => group,
        Err(error) => return tracing::warn!(%error, "the partition logs fsync each on its own"),
    };
    let mut joined = 0;
    for (partition, log) in logs.iter().enumerate() {
        match log.join_sync_group(&group) {
            Ok(true) => joined += 1,
            Ok(false) => tracing::info!(partition, "this partition's log is on another device: it fsyncs alone"),
            Err(error) => tracing::warn!(partition, %error, "this partition's log fsyncs alone"),
        }
    }
    tracing::info!(partitions = joined, "partition logs share their fsyncs (one syncfs a round)");
}

/// Closes logs after a failed start: closed, not dropped, so what recovery wrote is synced
/// and the locks released.
fn close_all(logs: Vec<Log>) {
    for log in logs {
        if let Err(close) = log.close() {
            tracing::warn!(%close, "closing a log after a failed start");
        }
    }
}

/// Starts the background log cleaner (compaction and retention), stopped (and joined) once
/// replication is told to stop, so that the log is free to close. Every role cleans, at
/// the points replication gives ([`Replication::clean_points`]): a leader below what is
/// committed, a follower below what its leader shipped, so that replicas cleaning at
/// different times remove the same records.
fn start_cleaner(
    log: &Arc<Log>,
    settings: crate::storage::CleanerSettings,
    replication: &Arc<Replication>,
    mut stopping: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, NodeError> {
    // Weak: the cleaner must not keep replication, and through it the log, alive at
    // shutdown; once replication is gone there is nothing left to clean for.
    let replication = Arc::downgrade(replication);
    let started = Cleaner::start(Arc::clone(log), settings, move |_: &Log| {
        replication.upgrade().map(|replication| replication.clean_points()).unwrap_or_default()
    });
    let cleaner = started.map_err(NodeError::Server)?;
    Ok(Some(tokio::spawn(async move {
        let _ = stopping.wait_for(|&stop| stop).await;
        let _ = tokio::task::spawn_blocking(move || cleaner.stop()).await;
    })))
}

/// What a starting node has bound.
struct Bound {
    listener: TcpListener,
    client_addr: SocketAddr,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    metrics_listener: Option<(TcpListener, SocketAddr)>,
}

/// Binds the ports, then, on a leader, begins a new epoch: the last step that can fail.
async fn bind_and_lead(config: &NodeConfig, log: &Log) -> Result<Bound, NodeError> {
    let bind = |what, addr: String| async move {
        let listener =
            TcpListener::bind(&addr).await.map_err(|cause| NodeError::Bind { what, addr: addr.clone(), cause })?;
        let local = listener.local_addr().map_err(|cause| NodeError::Bind { what, addr, cause })?;
        Ok::<_, NodeError>((listener, local))
    };
    let (listener, client_addr) = bind("", config.listen.clone()).await?;
    let (grpc_listener, grpc_addr) = bind(" for replication", config.grpc_listen.clone()).await?;
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind(" for metrics", addr.clone()).await?),
        None => None,
    };
    if !matches!(config.role, Role::Cluster { .. }) {
        cluster::Identity::new(&config.data_dir).refuse_outside_cluster()?;
    }
    if let Role::Leader { tolerance, .. } = &config.role {
        lead_own_log(log)?;
        // Records this node appends from now on carry an epoch no earlier leader of this
        // log used, so a follower can tell our log from a previous leader's.
        let epoch = log.begin_leader_epoch().map_err(NodeError::Epoch)?;
        tracing::info!(epoch, tolerance, "leading");
    }
    Ok(Bound { listener, client_addr, grpc_listener, grpc_addr, metrics_listener })
}

/// Without `--cluster` only the data dir that began a log leads it: a copy promoted by a
/// restart could mint the same epoch as a returning old leader, or take over with a log
/// missing acknowledged writes (README, "Replication"). An empty copy has nothing to
/// lose and begins a log of its own.
fn lead_own_log(log: &Log) -> Result<(), NodeError> {
    let lineage = log.lineage().map_err(NodeError::Lineage)?;
    let lineage = match lineage {
        Some(Lineage { origin: Origin::Copied, log_id }) if log.last_record().is_some() => {
            return Err(NodeError::Config(format!(
                "this data dir holds a copy of log {log_id}, made by following its leader: without \
                 --cluster a copy never leads (it could lose acknowledged writes or repeat an epoch). \
                 Restart the leader, start this node with --follow <leader's --grpc-listen>, or run the \
                 nodes in cluster mode (--cluster), which replaces a failed leader by itself"
            )));
        }
        // Written by a msglog from before `log-id`: a follower's copy looks the same as
        // the leader's dir, and only the operator knows which this was.
        None if log.last_record().is_some() => {
            return Err(NodeError::Config(
                "this data dir has records but no log-id (written by an older msglog); if this node was \
                 the leader, start it once with --adopt-log to mark it; a follower's copy must not lead"
                    .to_string(),
            ));
        }
        Some(Lineage { origin: Origin::Copied, .. }) => log.begin_new_lineage(),
        _ => log.begin_lineage(),
    };
    let lineage = lineage.map_err(NodeError::Lineage)?;
    tracing::debug!(log_id = %lineage.log_id, "leading this data dir's log");
    Ok(())
}

/// A node that is serving. Dropping it without [`shutdown`](RunningNode::shutdown) leaves
/// its tasks running on the runtime until the runtime ends.
pub struct RunningNode {
    node_id: String,
    client_addr: SocketAddr,
    grpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Partition `p`'s log and replication at index `p`.
    logs: Vec<Arc<Log>>,
    replications: Vec<Arc<Replication>>,
    stop_clients: watch::Sender<bool>,
    stop_replication: watch::Sender<bool>,
    server_task: JoinHandle<std::io::Result<()>>,
    replication_task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Cluster mode: the metadata quorum and the driver that follows its decisions.
    quorum: Option<Arc<Quorum>>,
    driver_task: Option<JoinHandle<Result<(), NodeError>>>,
    stop_driver: watch::Sender<bool>,
    /// The metrics server, the follower watch and the SIGHUP watch: they end on the stop
    /// signal.
    background: Vec<JoinHandle<()>>,
}

/// A node's state, typed: what STATS prints, as values.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: String,
    pub client_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The highest leader epoch this node has begun or seen (partition 0's).
    pub epoch: Epoch,
    /// Partition 0's log: the node's only one unless the cluster has several partitions.
    pub log: LogStats,
    pub replication: ReplicationStatus,
    /// Every partition's log, partition 0 first (one entry with one partition).
    pub partitions: Vec<LogStats>,
}

/// How long shutdown waits for the last tasks holding the log (fetch streams ending, a
/// follower's session unwinding) before reporting it still in use.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

impl RunningNode {
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Where clients connect (the text and Redis protocols).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Where followers and `msglog tail` connect.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where Prometheus scrapes `/metrics`, if `metrics_listen` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn status(&self) -> NodeStatus {
        let partitions: Vec<LogStats> = self.logs.iter().map(|log| log.stats()).collect();
        let log = partitions[0].clone();
        NodeStatus {
            node_id: self.node_id.clone(),
            client_addr: self.client_addr,
            grpc_addr: self.grpc_addr,
            epoch: log.epoch,
            log,
            replication: self.replications[0].status(),
            partitions,
        }
    }

    /// Serves until `signal` completes, or until the client or replication server stops on
    /// its own (a failure), then shuts down. The first failure is returned.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), NodeError> {
        let driver = async {
            match self.driver_task.as_mut() {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        let early = tokio::select! {
            () = signal => None,
            served = &mut self.server_task => Some(Ended::Server(served_result(served))),
            replicated = &mut self.replication_task => Some(Ended::Replication(replicated_result(replicated))),
            driven = driver => Some(Ended::Driver(driven.unwrap_or_else(|err| Err(NodeError::Replication(err.to_string()))))),
        };
        if matches!(early, Some(Ended::Driver(_))) {
            self.driver_task = None;
        }
        self.stop(early).await
    }

    /// Stops accepting, lets every connection answer what it has read, stops replication,
    /// and closes the log (fsyncing what is buffered and releasing its lock).
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.stop(None).await
    }

    async fn stop(self, early: Option<Ended>) -> Result<(), NodeError> {
        let RunningNode {
            logs,
            replications,
            stop_clients,
            stop_replication,
            server_task,
            replication_task,
            quorum,
            driver_task,
            stop_driver,
            background,
            ..
        } = self;
        let _ = stop_clients.send(true);
        let mut driven = Ok(());
        let early = match early {
            Some(Ended::Driver(result)) => {
                driven = result.and(Err(unexpected("cluster driver")));
                None
            }
            other => other,
        };
        // Clients first: a write waiting for its acknowledgements still gets them.
        let (served, replicated_early) = match early {
            None => (served_result(server_task.await), None),
            Some(Ended::Server(served)) => (served.and(Err(unexpected("client"))), None),
            Some(Ended::Replication(replicated)) => {
                (served_result(server_task.await), Some(replicated.and(Err(unexpected("replication")))))
            }
            Some(Ended::Driver(_)) => unreachable!("handled above"),
        };
        // Cluster mode: leadership is handed away (the quorum fences this node and elects
        // another in-sync replica) before the driver and the follower loop stop.
        if let Some(quorum) = &quorum {
            quorum.shutdown().await;
        }
        let _ = stop_driver.send(true);
        if let Some(task) = driver_task {
            match task.await {
                Ok(result) => driven = driven.and(result),
                Err(err) => driven = driven.and(Err(NodeError::Replication(err.to_string()))),
            }
        }
        let _ = stop_replication.send(true);
        let replicated = match replicated_early {
            Some(replicated) => replicated,
            None => replicated_result(replication_task.await),
        };
        drop(quorum);
        // Replication has been told to stop, and so have these.
        for task in background {
            let _ = task.await;
        }
        drop(replications);
        // Closed whatever else failed, so what is buffered is synced and the locks
        // released; the first failure is the one reported.
        let mut closed = Ok(());
        for log in logs {
            let result = release(log).await.and_then(|log| log.close().map_err(NodeError::Close));
            closed = closed.and(result);
        }
        served?;
        replicated?;
        driven?;
        closed?;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// A server task that ended before shutdown was asked for.
enum Ended {
    Server(Result<(), NodeError>),
    Replication(Result<(), NodeError>),
    Driver(Result<(), NodeError>),
}

fn unexpected(which: &str) -> NodeError {
    NodeError::Server(std::io::Error::other(format!("the {which} server stopped before shutdown")))
}

fn served_result(joined: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), NodeError> {
    match joined {
        Ok(result) => result.map_err(NodeError::Server),
        Err(err) => Err(NodeError::Server(std::io::Error::other(err))),
    }
}

fn replicated_result(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), NodeError> {
    match joined {
        Ok(result) => result.map_err(|err| NodeError::Replication(err.to_string())),
        Err(err) => Err(NodeError::Replication(err.to_string())),
    }
}

/// Waits until this is the last reference to the log. Streams and sessions end on the
/// shutdown signal but unwind on their own tasks, after the servers have returned; nothing
/// reports their end, so the count is polled, briefly, up to a deadline.
async fn release(mut log: Arc<Log>) -> Result<Log, NodeError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match Arc::try_unwrap(log) {
            Ok(log) => return Ok(log),
            Err(shared) if started.elapsed() < RELEASE_DEADLINE => {
                log = shared;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(_) => return Err(NodeError::StillInUse(RELEASE_DEADLINE)),
        }
    }
}

/// Every partition's replication figures for a scrape, read through weak references so
/// that metrics never keep replication (and through it the logs) alive at shutdown.
fn replication_figures(
    replications: Vec<std::sync::Weak<Replication>>,
) -> Box<dyn Fn() -> Vec<ReplicationFigures> + Send + Sync> {
    Box::new(move || {
        replications
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            // A partition this node holds no copy of (it only forwards to its leader) has
            // no lag to show: what it last knew of that leader would read as lag for good.
            .filter(|replication| {
                !matches!(replication.position(), crate::replication::Position::Following { replicating: false, .. })
            })
            .map(|replication| {
                let (partition, status) = (replication.partition(), replication.status());
                match &status {
                    ReplicationStatus::Follower { lag, .. } => follower_figures(partition, *lag),
                    ReplicationStatus::Member { lag, .. } if !status.is_leader() => follower_figures(partition, *lag),
                    ReplicationStatus::Leader { followers, .. } | ReplicationStatus::Member { followers, .. } => {
                        ReplicationFigures {
                            partition,
                            leader: true,
                            connected_followers: status.connected_followers() as u64,
                            follower_lag: followers.iter().map(|f| (f.id.clone(), f.lag)).collect(),
                            lag_behind_leader: None,
                        }
                    }
                }
            })
            .collect()
    })
}

fn follower_figures(partition: u32, lag: u64) -> ReplicationFigures {
    ReplicationFigures { partition, leader: false, lag_behind_leader: Some(lag), ..ReplicationFigures::default() }
}

/// Cluster mode's figures for a scrape, one per partition: the quorum's word on it, and
/// this node's high watermark of it (read weakly, as [`replication_figures`] does).
fn cluster_figures(
    replications: Vec<std::sync::Weak<Replication>>,
    metadata: watch::Receiver<Arc<crate::cluster::metadata::Metadata>>,
    node_id: String,
) -> Box<dyn Fn() -> Vec<ClusterFigures> + Send + Sync> {
    Box::new(move || {
        let meta = Arc::clone(&metadata.borrow());
        replications
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|replication| {
                let partition = replication.partition();
                let assigned = meta.partition_or_empty(partition);
                ClusterFigures {
                    partition,
                    leads_partition: assigned.leader.as_deref() == Some(node_id.as_str()),
                    isr_size: assigned.isr.len() as u64,
                    high_watermark: replication.high_watermark(),
                }
            })
            .collect()
    })
}

/// How often the follower watch looks; a lost follower is reported within this.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Looks in a row a follower ID must have more than one stream open before it is reported
/// as shared: a follower back from a crash opens a new stream before its old one is seen to
/// end. When its process died, its kernel closes the old one at once; when its host or the
/// network did, the old one lasts until the stream's keepalive gives up (15 s).
const SHARED_ID_LOOKS: u32 = 20;

/// Warns when a follower that was connected is no longer, or when two followers share an
/// ID (on a leader), or when the leader is lost (on a follower): replication reports no
/// such event, so its status is compared from one look to the next.
async fn watch_followers(replication: std::sync::Weak<Replication>, mut stopping: watch::Receiver<bool>) {
    // Every follower seen, and whether it was connected at the last look. One first seen
    // disconnected was lost too, unless it has not connected in this run at all (a manual
    // leader knows it from an earlier run): that one is waited for, said once.
    let mut known: Vec<(String, bool)> = Vec::new();
    // IDs with more than one stream open, and for how many looks in a row.
    let mut shared: HashMap<String, u32> = HashMap::new();
    let mut leader_connected = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            _ = stopping.wait_for(|&stop| stop) => return,
        }
        let Some(status) = replication.upgrade().map(|r| r.status()) else { return };
        match status {
            ReplicationStatus::Leader { followers, .. } | ReplicationStatus::Member { followers, .. } => {
                for follower in followers.iter().filter(|f| !f.connected) {
                    let was_connected = known.iter().find(|(id, _)| id == &follower.id).is_none_or(|(_, c)| *c);
                    if was_connected && !follower.seen {
                        tracing::info!(
                            follower = %follower.id,
                            "waiting for a follower known from an earlier run to connect; tombstones are kept for it until it does"
                        );
                    } else if was_connected {
                        tracing::warn!(
                            follower = %follower.id, lag = follower.lag,
                            "lost a follower: its replication stream ended"
                        );
                    }
                }
                known = followers.iter().map(|f| (f.id.clone(), f.connected)).collect();
                shared.retain(|id, _| followers.iter().any(|f| &f.id == id && f.streams > 1));
                for follower in followers.iter().filter(|f| f.streams > 1) {
                    let looks = shared.entry(follower.id.clone()).or_default();
                    *looks += 1;
                    if *looks == SHARED_ID_LOOKS {
                        tracing::warn!(
                            follower = %follower.id, streams = follower.streams,
                            "followers share this node ID, and the tolerance counts them as one: give each follower its own --node-id"
                        );
                    }
                }
            }
            ReplicationStatus::Follower { leader_addr, connected: now, lag, .. } => {
                if leader_connected && !now {
                    tracing::warn!(leader = %leader_addr, lag, "lost the leader: reconnecting");
                }
                leader_connected = now;
            }
        }
    }
}
