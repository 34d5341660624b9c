//! File descriptors, checked once at start against what the server may need.
//!
//! Every client connection holds a descriptor, and so do replication streams, log segment
//! files, listeners and refusals in flight. A server whose connections use up
//! `RLIMIT_NOFILE` cannot open its next segment, so the limit is checked before serving:
//! the soft limit is raised towards the hard limit when that is enough, and otherwise the
//! server refuses to start, saying which numbers do not fit.

// `rlim_t` is `u64` on Linux but not on every Unix; the casts are for those.
#![allow(clippy::unnecessary_cast)]

use std::io;

/// Descriptors kept for everything but client connections and replication streams: the
/// log's segment files and lock, both listeners, stdio, over-limit refusals in flight,
/// a follower's connection to its leader, and the runtime's own.
pub const DESCRIPTOR_HEADROOM: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error(
        "--max-connections {max_connections} needs {needed} file descriptors ({max_connections} connections + \
         {others} for replication streams, log files and listeners), but this process may open only {hard} \
         (RLIMIT_NOFILE: soft {soft}, hard {hard}); raise the limit (`ulimit -n {needed}` in the shell that \
         starts msglog, or LimitNOFILE= in its systemd unit) or lower --max-connections to at most {fits}"
    )]
    TooFew { max_connections: u64, others: u64, needed: u64, soft: u64, hard: u64, fits: u64 },
    #[error("cannot read or raise the file descriptor limit (RLIMIT_NOFILE): {0}")]
    Io(#[from] io::Error),
}

/// The process's descriptor limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    pub soft: u64,
    pub hard: u64,
}

impl DescriptorLimit {
    pub fn current() -> io::Result<DescriptorLimit> {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DescriptorLimit { soft: limit.rlim_cur as u64, hard: limit.rlim_max as u64 })
    }

    /// Connections that fit beside `others` descriptors under the hard limit.
    pub fn connections_that_fit(&self, others: u64) -> u64 {
        self.hard.saturating_sub(others + DESCRIPTOR_HEADROOM)
    }
}

/// Makes sure `max_connections` client connections and `other_streams` replication
/// streams fit, raising the soft limit if needed. Returns the soft limit now in force.
pub fn ensure_descriptors(max_connections: u64, other_streams: u64) -> Result<u64, DescriptorError> {
    let limit = DescriptorLimit::current()?;
    let others = other_streams + DESCRIPTOR_HEADROOM;
    let needed = max_connections.saturating_add(others);
    if limit.soft >= needed {
        return Ok(limit.soft);
    }
    if limit.hard < needed {
        return Err(DescriptorError::TooFew {
            max_connections,
            others,
            needed,
            soft: limit.soft,
            hard: limit.hard,
            fits: limit.connections_that_fit(other_streams),
        });
    }
    // Up to the hard limit when it is a number, since connections are not the only thing
    // that grows; an unlimited hard limit is not a valid soft one on Linux.
    let raised = if limit.hard == libc::RLIM_INFINITY as u64 { needed } else { limit.hard };
    let new = libc::rlimit { rlim_cur: raised as libc::rlim_t, rlim_max: limit.hard as libc::rlim_t };
    // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
    // one is always permitted.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    tracing::info!(from = limit.soft, to = raised, "raised the file descriptor limit (RLIMIT_NOFILE)");
    Ok(raised)
}
