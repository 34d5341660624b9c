//! Network partitions between loopback addresses, inside a private network namespace.
//!
//! Linux network namespaces belong to threads: `unshare(CLONE_NEWNET)` moves only the
//! calling thread, and the threads and processes it creates afterwards start in the same
//! namespace. [`isolated`] runs a closure on a fresh thread that did so, brought `lo` up and
//! made an nftables table; there 127.0.0.1, 127.0.0.2, ... all work, nothing on the host can
//! be reached, and nothing in it can be reached from the host. Servers the closure starts
//! (`msglog serve` processes, tokio runtimes, proxies) live in the namespace with it.
//!
//! Partitions drop packets as they arrive (the nftables `input` hook), as a lossy network
//! would: senders get no error, TCP retransmits, and an established connection carries on
//! once [`Netns::heal`] removes the rules.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Why a namespace could not be made: the environment lacks a tool or a privilege.
#[derive(Debug)]
pub struct Skip(pub String);

impl Skip {
    /// Prints `SKIPPED: <reason>` for a test that returns early, or panics when
    /// `MSGLOG_REQUIRE_NETNS=1` (as CI sets when it runs as root): a test that skips there
    /// tests nothing.
    pub fn report(self) {
        let required = std::env::var("MSGLOG_REQUIRE_NETNS").is_ok_and(|v| v == "1");
        assert!(!required, "{} and MSGLOG_REQUIRE_NETNS=1 (run as root with iproute2 and nftables)", self.0);
        eprintln!("SKIPPED: {}", self.0);
    }
}

const TABLE: &str = "msglog_faults";

/// A private network namespace, handed to the closure of [`isolated`]; clones name the same
/// namespace, and may be moved to other threads.
#[derive(Clone)]
pub struct Netns {
    /// Its `/proc/thread-self/ns/net`, so commands join it whichever thread spawns them.
    handle: Arc<File>,
}

/// [`isolated`], for a test that needs nothing back: a missing privilege or tool is
/// reported ([`Skip::report`]), and fails the test under `MSGLOG_REQUIRE_NETNS=1`.
pub fn in_namespace(body: impl FnOnce(&Netns) + Send) {
    if let Err(skip) = isolated(body) {
        skip.report();
    }
}

/// Runs `body` on a new thread in a new network namespace, with `lo` up and an empty
/// nftables table, and returns what it returns; a panic in `body` goes on in the caller.
/// The namespace lasts while the thread or any process started in it lives.
pub fn isolated<T: Send>(body: impl FnOnce(&Netns) -> T + Send) -> Result<T, Skip> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Skip("network namespaces need root (unshare, nft)".into()));
    }
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            let ns = Netns::enter()?;
            Ok(body(&ns))
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Netns {
    /// Moves the calling thread into a new namespace and sets it up.
    fn enter() -> Result<Netns, Skip> {
        // SAFETY: unshare(2) with CLONE_NEWNET affects only this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let err = io::Error::last_os_error();
            return Err(Skip(format!("unshare(CLONE_NEWNET) failed: {err}")));
        }
        let handle = File::open("/proc/thread-self/ns/net").map_err(|err| Skip(format!("namespace handle: {err}")))?;
        let ns = Netns { handle: Arc::new(handle) };
        ns.setup("ip", &["link", "set", "lo", "up"])?;
        let table = format!(
            "add table inet {TABLE}; \
             add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}"
        );
        ns.setup("nft", &[&table])?;
        Ok(ns)
    }

    fn setup(&self, program: &str, args: &[&str]) -> Result<(), Skip> {
        match self.command(program).args(args).output() {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(Skip(format!(
                "`{program} {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(Skip(format!("`{program}` is not installed (iproute2, nftables)")))
            }
            Err(err) => Err(Skip(format!("cannot run `{program}`: {err}"))),
        }
    }

    /// A command whose process runs in this namespace, whichever thread spawns it.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let fd = self.handle.as_raw_fd();
        // SAFETY: runs in the forked child before exec; setns(2) is a plain system call and
        // `fd` stays open in the child, which inherited it.
        unsafe {
            command.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            });
        }
        command
    }

    /// Drops all traffic between `a` and `b`, both ways.
    pub fn partition(&self, a: IpAddr, b: IpAddr) {
        let ip = family(a, b);
        self.add_rules(&[format!("{ip} saddr {a} {ip} daddr {b} drop"), format!("{ip} saddr {b} {ip} daddr {a} drop")]);
    }

    /// Drops all traffic to and from `a`, except from `a` to itself.
    pub fn isolate(&self, a: IpAddr) {
        let ip = family(a, a);
        self.add_rules(&[
            format!("{ip} saddr {a} {ip} daddr != {a} drop"),
            format!("{ip} daddr {a} {ip} saddr != {a} drop"),
        ]);
    }

    /// Drops traffic from `from` to `to` only; the other way still passes (so TCP, which
    /// needs both ways, can neither connect nor deliver from `from`, but `to` can still send
    /// on an established connection).
    pub fn one_way(&self, from: IpAddr, to: IpAddr) {
        let ip = family(from, to);
        self.add_rules(&[format!("{ip} saddr {from} {ip} daddr {to} drop")]);
    }

    /// Removes every rule: all addresses reach each other again.
    pub fn heal(&self) {
        self.nft(&format!("flush chain inet {TABLE} input"));
    }

    /// The rules in force, as `nft` lists them (for failure messages).
    pub fn rules(&self) -> String {
        let output = self.command("nft").args(["list", "chain", "inet", TABLE, "input"]).output().expect("run nft");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn add_rules(&self, rules: &[String]) {
        let script: Vec<String> = rules.iter().map(|rule| format!("add rule inet {TABLE} input {rule}")).collect();
        self.nft(&script.join("; "));
    }

    /// Runs one nft script; its commands apply together or not at all.
    fn nft(&self, script: &str) {
        let output = self.command("nft").arg(script).stdin(Stdio::null()).output().expect("run nft");
        assert!(output.status.success(), "nft {script:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
}

/// The nftables payload keyword for a pair of addresses of one family.
fn family(a: IpAddr, b: IpAddr) -> &'static str {
    match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "ip",
        (IpAddr::V6(_), IpAddr::V6(_)) => "ip6",
        _ => panic!("{a} and {b} are of different address families"),
    }
}
