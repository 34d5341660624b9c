//! A TCP proxy that injects network faults between a client and a target, for replication
//! tests (this kernel has no netem). It runs on its own thread with its own tokio runtime,
//! so sync tests and tests already inside a runtime use it alike.
//!
//! Each connection is pumped in both directions by a reader (the socket into a bounded
//! queue of chunks stamped with their arrival time) and a writer (the queue out to the other
//! socket, as the current [`Fault`] allows). A fault set with [`FaultProxy::set`] applies at
//! once to chunks already queued and to every connection, old and new.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Bytes read from a socket at once; with [`QUEUE_CHUNKS`] this bounds the memory a
/// connection holds (two directions of 16 chunks of 16 KiB), however long a delay is.
const CHUNK: usize = 16 * 1024;
const QUEUE_CHUNKS: usize = 16;

/// Which way bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client that connected to the proxy to the target.
    ToTarget,
    /// From the target back to the client.
    FromTarget,
}

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Bytes are forwarded as they arrive.
    Pass,
    /// Each chunk is forwarded once this long has passed since it arrived. Changing the
    /// fault re-times chunks still waiting: `Pass` releases them at once.
    Delay(Duration),
    /// Open connections are reset (both sockets closed with SO_LINGER 0); new ones are
    /// accepted and reset at once, without connecting to the target.
    Drop,
    /// Connections stay open; bytes are read and discarded both ways, nothing forwarded.
    /// Discarded bytes are gone for good: after `Pass` each stream goes on with the bytes
    /// sent from then on, so the peers see a gap (as after a lost segment nobody resends).
    /// An end of stream is not discarded: it is held and forwarded once the way is open.
    Blackhole,
    /// Half-open: bytes going this way pass, the other way is blackholed.
    OneWay(Direction),
}

/// What a writer does with the chunks of its direction under a fault.
enum Mode {
    Forward { after: Duration },
    Discard,
}

impl Fault {
    fn mode(self, direction: Direction) -> Mode {
        match self {
            Fault::Pass => Mode::Forward { after: Duration::ZERO },
            Fault::Delay(after) => Mode::Forward { after },
            Fault::OneWay(open) if open == direction => Mode::Forward { after: Duration::ZERO },
            Fault::Drop | Fault::Blackhole | Fault::OneWay(_) => Mode::Discard,
        }
    }
}

/// A running proxy; dropping it stops it and closes every connection it holds.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (use port 0 for a free port) and forwards to `target`, passing
    /// traffic until told otherwise. The listener is bound before this returns.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> FaultProxy {
        let listener = StdListener::bind(listen).unwrap_or_else(|err| panic!("proxy bind {listen}: {err}"));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, faults) = watch::channel(Fault::Pass);
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let counters = (Arc::clone(&open), Arc::clone(&accepted));
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("proxy runtime");
                // Returning drops the runtime, and with it every connection task and socket.
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, target, faults, counters) => {}
                    }
                });
            })
            .expect("spawn proxy thread");
        FaultProxy { addr, fault, open, accepted, stop: Some(stop), thread: Some(thread) }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` to open connections, queued bytes and new connections.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections open through the proxy now (client and target side both open).
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, including those a `Drop` fault reset at once: a client
    /// that reconnected shows up here.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<Fault>,
    (open, accepted): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: pausing keeps a persistent error from spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        if *faults.borrow() == Fault::Drop {
            reset(&client);
            continue;
        }
        let faults = faults.clone();
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                // The target refused: the client sees what it would have seen, a reset.
                reset(&client);
                return;
            };
            open.fetch_add(1, Ordering::SeqCst);
            proxy_connection(client, server, faults).await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Pumps both ways until both streams ended, a socket failed, or a `Drop` fault.
async fn proxy_connection(client: TcpStream, server: TcpStream, mut faults: watch::Receiver<Fault>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let to_target = pump(&client, &server, Direction::ToTarget, faults.clone());
    let from_target = pump(&server, &client, Direction::FromTarget, faults.clone());
    tokio::pin!(to_target, from_target);
    let (mut to_done, mut from_done) = (false, false);
    let failed = loop {
        if to_done && from_done {
            break false;
        }
        if *faults.borrow_and_update() == Fault::Drop {
            break true;
        }
        tokio::select! {
            ok = &mut to_target, if !to_done => { to_done = true; if !ok { break true } }
            ok = &mut from_target, if !from_done => { from_done = true; if !ok { break true } }
            changed = faults.changed() => if changed.is_err() { break true },
        }
    };
    if failed {
        reset(&client);
        reset(&server);
    }
    // Returning closes both sockets: with a reset if `failed`, else with the end of stream
    // each side already got.
}

/// One direction: a reader filling the queue and a writer draining it, run together so a
/// full queue holds the reader back. True if the stream ended and its end was forwarded.
async fn pump(from: &TcpStream, to: &TcpStream, direction: Direction, faults: watch::Receiver<Fault>) -> bool {
    let (chunks, queue) = mpsc::channel(QUEUE_CHUNKS);
    let reader = read_side(from, chunks);
    let writer = write_side(to, queue, direction, faults);
    tokio::pin!(reader, writer);
    tokio::select! {
        ok = &mut reader => ok && writer.await,
        ok = &mut writer => ok,
    }
}

/// A chunk with its arrival time; an empty one is the end of the stream.
type Chunk = (Instant, Vec<u8>);

/// True once it queued the end of the stream; false if reading failed.
async fn read_side(from: &TcpStream, chunks: mpsc::Sender<Chunk>) -> bool {
    loop {
        let mut buf = vec![0; CHUNK];
        let Ok(n) = read_some(from, &mut buf).await else { return false };
        buf.truncate(n);
        if chunks.send((Instant::now(), buf)).await.is_err() {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// True once it forwarded the end of the stream; false if writing failed.
async fn write_side(
    to: &TcpStream,
    mut queue: mpsc::Receiver<Chunk>,
    direction: Direction,
    mut faults: watch::Receiver<Fault>,
) -> bool {
    while let Some((arrived, bytes)) = queue.recv().await {
        let Some(forward) = release(arrived, bytes.is_empty(), direction, &mut faults).await else { return false };
        if bytes.is_empty() {
            // SAFETY: shutdown(2) on a socket the connection task keeps open.
            unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
            return true;
        }
        if forward && write_all(to, &bytes).await.is_err() {
            return false;
        }
    }
    false
}

/// Waits until the fault decides a chunk's fate, re-deciding whenever the fault changes:
/// `Some(true)` to forward it, `Some(false)` to discard it. An end of stream is never
/// discarded, only held. `None` if the proxy is going away.
async fn release(
    arrived: Instant,
    end: bool,
    direction: Direction,
    faults: &mut watch::Receiver<Fault>,
) -> Option<bool> {
    loop {
        let mode = faults.borrow_and_update().mode(direction);
        match mode {
            Mode::Forward { after } if Instant::now() >= arrived + after => return Some(true),
            Mode::Forward { after } => tokio::select! {
                () = tokio::time::sleep_until(arrived + after) => return Some(true),
                changed = faults.changed() => changed.ok()?,
            },
            Mode::Discard if !end => return Some(false),
            Mode::Discard => faults.changed().await.ok()?,
        }
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Makes closing the socket send a reset rather than an orderly end of stream (SO_LINGER
/// with a zero timeout), so the peer sees its connection broken, not finished.
fn reset(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt(2) on a socket `stream` keeps open, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
