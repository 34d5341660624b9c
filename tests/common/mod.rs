//! Helpers shared by the integration tests: an in-process server with raw-socket clients,
//! and real `msglog` processes with blocking line clients.
#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod compaction;
pub mod fs;
pub mod history;
pub mod netns;
pub mod power_cut;
pub mod prometheus;
pub mod proxy;
pub mod rounds;
pub mod scenario;
pub mod seeded;
pub mod tls;
pub mod wire;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msglog::server::{self, ServerConfig};
use msglog::storage::{Config, Log};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound on any single wait: it only turns a hang into a failure.
pub const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// In-process server
// ---------------------------------------------------------------------------------------

/// A server running on this test's runtime, on a loopback port chosen by the OS.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    /// The server's log, for tests that look beneath the protocol (its durable mark).
    pub log: Arc<Log>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(ServerConfig { stats_interval: None, ..ServerConfig::default() }, Config::default())
            .await
    }

    pub async fn start_with(config: ServerConfig, log_config: Config) -> TestServer {
        TestServer::start_with_fs(config, log_config, Arc::new(msglog::storage::RealFs)).await
    }

    /// A server whose log does its file I/O through `fs` (fault injection).
    pub async fn start_with_fs(
        config: ServerConfig,
        log_config: Config,
        fs: Arc<dyn msglog::storage::FileSystem>,
    ) -> TestServer {
        let dir = TempDir::new().expect("temp dir");
        let log = Arc::new(Log::open_with(dir.path(), log_config, fs).expect("open log"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, Arc::clone(&log), config, async move {
            let _ = stopped.await;
        }));
        TestServer { addr, dir, log, shutdown: Some(shutdown), task: Some(task) }
    }

    pub async fn connect(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server did not stop")
                .expect("server task")
                .expect("server run");
        }
    }
}

/// A raw-socket client: sends bytes, reads `\r\n`-terminated reply lines.
pub struct TestClient {
    reader: AsyncBufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl TestClient {
    pub async fn connect(addr: SocketAddr) -> TestClient {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Small writes go out as sent, so a test that splits a request really splits it.
        stream.set_nodelay(true).expect("nodelay");
        let (reader, writer) = stream.into_split();
        TestClient { reader: AsyncBufReader::new(reader), writer }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// The next reply line, without its `\r\n`. Panics on EOF or a reply not ending in `\r\n`.
    pub async fn read_reply(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(DEADLINE, self.reader.read_until(b'\n', &mut line))
            .await
            .expect("no reply before the deadline")
            .expect("read");
        assert!(n > 0, "connection closed while a reply was expected");
        assert!(line.ends_with(b"\r\n"), "reply not ended by CRLF: {:?}", line.escape_ascii().to_string());
        line.truncate(line.len() - 2);
        line
    }

    /// Reads exactly `n` bytes.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        tokio::time::timeout(DEADLINE, self.reader.read_exact(&mut bytes))
            .await
            .expect("no reply before the deadline")
            .expect("read");
        bytes
    }

    /// Reads as many bytes as `expected` holds and checks they are exactly those.
    pub async fn expect(&mut self, expected: &[u8]) {
        let got = self.read_bytes(expected.len()).await;
        assert_eq!(got.escape_ascii().to_string(), expected.escape_ascii().to_string());
    }

    /// Sends `bytes` while reading `reply_bytes` bytes of replies, concurrently.
    pub async fn exchange(&mut self, bytes: &[u8], reply_bytes: usize) -> Vec<u8> {
        let writer = &mut self.writer;
        let reader = &mut self.reader;
        let send = async move { writer.write_all(bytes).await.expect("send") };
        let receive = async move {
            let mut got = vec![0; reply_bytes];
            reader.read_exact(&mut got).await.expect("read");
            got
        };
        let ((), got) = tokio::time::timeout(DEADLINE, async { tokio::join!(send, receive) })
            .await
            .expect("replies before the deadline");
        got
    }

    /// Sends `line` plus `\n` and returns the reply.
    pub async fn request(&mut self, line: &[u8]) -> Vec<u8> {
        self.send(&[line, b"\n"].concat()).await;
        self.read_reply().await
    }

    /// Sends `bytes` while reading `replies` reply lines, concurrently, so neither side can
    /// block the other on full socket buffers.
    pub async fn pipeline(&mut self, bytes: &[u8], replies: usize) -> Vec<Vec<u8>> {
        let writer = &mut self.writer;
        let reader = &mut self.reader;
        let send = async move { writer.write_all(bytes).await.expect("send") };
        let receive = async move {
            let mut got = Vec::with_capacity(replies);
            for _ in 0..replies {
                let mut line = Vec::new();
                let n = reader.read_until(b'\n', &mut line).await.expect("read");
                assert!(n > 0, "connection closed after {} of {replies} replies", got.len());
                assert!(line.ends_with(b"\r\n"));
                line.truncate(line.len() - 2);
                got.push(line);
            }
            got
        };
        let ((), got) = tokio::time::timeout(DEADLINE, async { tokio::join!(send, receive) })
            .await
            .expect("pipelined replies before the deadline");
        got
    }

    /// True if the server closed the connection (EOF, or a reset) with nothing more to read.
    pub async fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(DEADLINE, self.reader.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Real processes
// ---------------------------------------------------------------------------------------

pub fn msglog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_msglog"))
}

/// A loopback port that is free now, below Linux's ephemeral range (32768 and up): between
/// this check and the server's bind, an outgoing connection anywhere on the machine could
/// take a freed ephemeral port, and a node killed and restarted on it must find it free.
///
/// A port is handed out once per test binary: tests run in parallel threads, and a port
/// that is free because its node is down (killed, to be restarted on it) or not yet started
/// must not go to another test.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) << 32 ^ u64::from(nanos) ^ CALLS.fetch_add(1, Ordering::Relaxed) << 20;
    let mut rng = scenario::Rng::new(seed);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = 20_000 + rng.below(12_000) as u16;
        if !handed_out.contains(&port) && StdListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// Calls `ready` until it returns `Some`, pausing briefly between tries, or panics with
/// `what` at the deadline. Polling is the only way to learn that another process is ready.
pub fn poll_until<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `open` (of a log, or a check of one) once the data dir is no longer locked, and its
/// result. A log this process has just closed can still read as locked for a moment: a
/// process another test is spawning holds a copy of every open descriptor, the lock file's
/// and with it the flock, from its fork until its exec closes them. That is waited out
/// (bounded); any other error is returned.
pub fn once_unlocked<T>(mut open: impl FnMut() -> msglog::storage::Result<T>) -> msglog::storage::Result<T> {
    poll_until("the data dir's lock to be free", || match open() {
        Err(msglog::storage::StorageError::Locked { .. }) => None,
        other => Some(other),
    })
}

/// A `msglog serve` process, SIGKILLed by PID when dropped if still running.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Its `--grpc-listen` address (replication and `msglog tail`).
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
    /// Where this run's lines start in the stderr file, which a restart on the same port
    /// appends to: an earlier run's ready line must not count.
    stderr_from: u64,
    /// Whether its INFO lines, the ready line among them, reach stderr.
    logs_info: bool,
}

/// What a node logs once it has bound its ports and taken its role and epoch. Its ports
/// accept connections (into the backlog) before that, so a connection alone can reach a
/// node that has not yet begun its epoch.
const READY_LINE: &str = "msglog listening";

impl ServerProcess {
    /// Starts `msglog serve` on `data_dir` and a free port, and waits until it accepts
    /// connections. Its stderr goes to a file beside `data_dir`, so `data_dir` should be a
    /// subdirectory of the test's temporary directory.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        let mut server = ServerProcess::spawn(data_dir, extra_args);
        server.wait_until_ready();
        server
    }

    /// Starts the process without waiting for it, on free client and gRPC ports.
    pub fn spawn(data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        ServerProcess::spawn_on(data_dir, addr, grpc, extra_args)
    }

    /// Starts `msglog serve` on the given ports and waits until it accepts clients.
    pub fn start_on(data_dir: &Path, addr: SocketAddr, grpc: SocketAddr, extra_args: &[&str]) -> ServerProcess {
        let mut server = ServerProcess::spawn_on(data_dir, addr, grpc, extra_args);
        server.wait_until_ready();
        server
    }

    pub fn spawn_on(data_dir: &Path, addr: SocketAddr, grpc: SocketAddr, extra_args: &[&str]) -> ServerProcess {
        ServerProcess::spawn_configured(data_dir, addr, grpc, extra_args, |_| {})
    }

    /// Starts the process on free ports with `RLIMIT_NOFILE` set to `nofile` (soft and
    /// hard), without waiting for it.
    pub fn spawn_with_nofile(data_dir: &Path, nofile: u64, extra_args: &[&str]) -> ServerProcess {
        use std::os::unix::process::CommandExt;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        ServerProcess::spawn_configured(data_dir, addr, grpc, extra_args, |command| {
            let limit = libc::rlimit { rlim_cur: nofile as libc::rlim_t, rlim_max: nofile as libc::rlim_t };
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe
            // and touches only the struct, which is copied into the closure.
            unsafe {
                command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        })
    }

    /// Waits until the server accepts connections (it panics if the server exits first).
    pub fn wait_until_accepting(&mut self) {
        self.wait_until_ready();
    }

    fn spawn_configured(
        data_dir: &Path,
        addr: SocketAddr,
        grpc: SocketAddr,
        extra_args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> ServerProcess {
        let parent = data_dir.parent().expect("data dir inside a temporary directory");
        let stderr_path = parent.join(format!("serve-{}.stderr", addr.port()));
        let stderr = std::fs::File::options().create(true).append(true).open(&stderr_path).expect("stderr file");
        let stderr_from = stderr.metadata().expect("stderr file's length").len();
        // A level or a config file of the test's choosing may hide INFO: then the port is
        // all there is to wait for.
        let chooses_logging = |arg: &&str| arg.starts_with("--log-level") || arg.starts_with("--config");
        let logs_info = !extra_args.iter().any(chooses_logging)
            && std::env::var_os("MSGLOG_LOG_LEVEL").is_none()
            && std::env::var_os("MSGLOG_CONFIG").is_none();
        let mut command = msglog();
        configure(&mut command);
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn msglog serve");
        ServerProcess { child, addr, grpc, data_dir: data_dir.to_path_buf(), stderr_path, stderr_from, logs_info }
    }

    /// Waits until the server has logged that it is ready (when its INFO lines are on) and
    /// accepts connections; panics if it exits first.
    pub fn wait_until_ready(&mut self) {
        let addr = self.addr;
        poll_until("the server to log that it listens and accept connections", || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("server exited early with {status}:\n{}", self.stderr());
            }
            let announced = !self.logs_info || self.stderr_of_this_run().contains(READY_LINE);
            (announced && StdStream::connect(addr).is_ok()).then_some(())
        });
    }

    /// What this run wrote to the stderr file, without earlier runs' lines.
    fn stderr_of_this_run(&self) -> String {
        let bytes = std::fs::read(&self.stderr_path).unwrap_or_default();
        let from = (self.stderr_from as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's PID; the child has not been reaped yet, so the
        // PID cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().expect("wait after SIGKILL");
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        poll_until("the server to exit", || self.child.try_wait().expect("try_wait"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `signal`; the child is still unreaped.
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// STATS of the server at `addr` as a map of its `key=value` pairs.
pub fn stats(addr: SocketAddr) -> std::collections::HashMap<String, String> {
    let mut client = LineClient::connect(addr).expect("connect for STATS");
    let line = client.request(b"STATS").expect("STATS");
    String::from_utf8(line)
        .expect("STATS is text")
        .split(' ')
        .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// A RESP request: an array of bulk strings.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP bulk string: its header, the bytes and CRLF.
pub fn bulk(value: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", value.len()).as_bytes(), value, b"\r\n"].concat()
}

/// Sends one RESP request and checks its reply, byte for byte.
pub async fn check(client: &mut TestClient, args: &[&[u8]], reply: &[u8]) {
    client.send(&resp(args)).await;
    client.expect(reply).await;
}

/// Sends one RESP request and returns its first reply line (an error or a status),
/// without CRLF.
pub async fn line(client: &mut TestClient, args: &[&[u8]]) -> String {
    client.send(&resp(args)).await;
    String::from_utf8(client.read_reply().await).expect("UTF-8 reply")
}

/// Reads one bulk string reply.
pub async fn read_bulk(client: &mut TestClient) -> Vec<u8> {
    let header = String::from_utf8(client.read_reply().await).expect("UTF-8 header");
    let len: usize =
        header.strip_prefix('$').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a bulk: {header}"));
    let body = client.read_bytes(len + 2).await;
    body[..len].to_vec()
}

/// Reads an array of bulk strings.
pub async fn read_bulks(client: &mut TestClient) -> Vec<Vec<u8>> {
    let header = String::from_utf8(client.read_reply().await).expect("UTF-8 header");
    let n: usize =
        header.strip_prefix('*').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not an array: {header}"));
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(read_bulk(client).await);
    }
    items
}

/// A blocking text-protocol client for process tests.
pub struct LineClient {
    reader: BufReader<StdStream>,
    writer: StdStream,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> std::io::Result<LineClient> {
        let stream = StdStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        Ok(LineClient { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends one line and returns its reply without `\r\n`; an error if the connection fails
    /// or closes first.
    pub fn request(&mut self, line: &[u8]) -> std::io::Result<Vec<u8>> {
        self.writer.write_all(&[line, b"\n"].concat())?;
        let mut reply = Vec::new();
        if self.reader.read_until(b'\n', &mut reply)? == 0 || !reply.ends_with(b"\r\n") {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        reply.truncate(reply.len() - 2);
        Ok(reply)
    }

    /// True once the server has closed this connection.
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(std::io::Read::read_to_end(&mut self.reader, &mut rest), Ok(0) | Err(_))
    }
}

// ---------------------------------------------------------------------------------------
// Routes a test sets
// ---------------------------------------------------------------------------------------

/// A cluster that only routes: the test says who leads. Writes are admitted while the
/// route is `Local`.
pub struct TestRoutes {
    pub routes: tokio::sync::watch::Sender<msglog::server::Route>,
}

impl TestRoutes {
    pub fn new(route: msglog::server::Route) -> Arc<TestRoutes> {
        Arc::new(TestRoutes { routes: tokio::sync::watch::channel(route).0 })
    }

    pub fn set(&self, route: msglog::server::Route) {
        self.routes.send_replace(route);
    }
}

impl msglog::server::Cluster for TestRoutes {
    fn admit_write(&self) -> Result<(), msglog::server::Refusal> {
        match *self.routes.borrow() {
            msglog::server::Route::Local => Ok(()),
            _ => Err(msglog::server::Refusal("read-only: this node does not lead".to_string())),
        }
    }

    fn appended(&self, _next_offset: msglog::storage::Offset) {}

    fn replicated(&self, _offset: msglog::storage::Offset) -> Option<msglog::server::Replicated<'_>> {
        None
    }

    fn role(&self) -> &'static str {
        "follower"
    }

    fn routes(&self) -> Option<tokio::sync::watch::Receiver<msglog::server::Route>> {
        Some(self.routes.subscribe())
    }

    fn stats(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// `count` distinct IDs that `partition_of` puts in `partition` of `partitions`.
pub fn ids_in(partition: u32, partitions: u32, count: usize) -> Vec<Vec<u8>> {
    (0..100_000)
        .map(|n| format!("id-{n}").into_bytes())
        .filter(|id| msglog::cluster::partitioning::partition_of(id, partitions) == partition)
        .take(count)
        .collect()
}

/// A forwarder that counts the attempts to reach a leader (closing messages aside), passing
/// them on.
pub struct CountingForwarder {
    pub inner: Arc<msglog::replication::ForwardClient>,
    pub attempts: std::sync::atomic::AtomicUsize,
}

impl msglog::server::Forwarder for CountingForwarder {
    fn try_forward(&self, grpc_addr: &str, request: msglog::server::Outgoing) -> Result<(), msglog::server::Outgoing> {
        if !request.close {
            self.attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.try_forward(grpc_addr, request)
    }
}
