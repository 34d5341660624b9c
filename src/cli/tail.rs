//! `msglog tail`: print a node's log records from an offset and keep following.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::replication::tail::{TailError, TailRequest, tail_with_tls};
use crate::server::Password;
use crate::storage::{RecordKind, RecordRef};

/// Print the records of a node's log, from an offset on, as they are appended.
///
/// Each SET prints as one line `<offset> <epoch> <id> <message>`; a DEL as
/// `<offset> <epoch> <id>` (no space after the ID). Bytes of the message that would break
/// the line (CR, LF, other control bytes, backslash) are printed as `\n`, `\r`, `\xNN`,
/// `\\`. `--json` prints one JSON object per record instead. Works against any node,
/// leader or follower; records are shown as soon as they are in that node's log, before
/// they are durable or replicated.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// gRPC address of the node to read (its --grpc-listen).
    #[arg(long, env = "MSGLOG_TAIL_FROM", default_value = "127.0.0.1:6667", value_name = "GRPC_ADDR")]
    from: String,
    /// First offset to print (0 is the start of the log).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// The partition whose log to print, in a cluster of several partitions; ask a node
    /// that holds a replica of it (`msglog cluster status` lists them).
    #[arg(long, default_value_t = 0, value_name = "P")]
    partition: u32,
    /// Stop once the records that were in the log when tail started are printed.
    #[arg(long)]
    no_follow: bool,
    /// One JSON object per line: offset, epoch, timestamp_ms, kind, id, message (a message
    /// or ID that is not UTF-8 is given as `message_hex` / `id_hex` instead).
    #[arg(long)]
    json: bool,
    /// The node's password (its --requirepass); prefer the environment variable, as a
    /// flag shows in `ps`.
    #[arg(long, env = "MSGLOG_PASSWORD", hide_env_values = true, value_parser = super::password::PasswordParser)]
    password: Option<Password>,
    /// Speak TLS to a node started with --tls-ca (its gRPC port is then mutual TLS, so
    /// give --cert and --key too); needs --cacert.
    #[arg(long, requires = "cacert")]
    tls: bool,
    /// The CA certificate (PEM) that signed the node's certificate, for --tls.
    #[arg(long, env = "MSGLOG_TLS_CA", value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,
    /// A client certificate (PEM) signed by the cluster's CA, for a node that demands one.
    #[arg(long, env = "MSGLOG_TLS_CERT", value_name = "PEM", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "MSGLOG_TLS_KEY", value_name = "PEM", requires = "cert")]
    key: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    offset: u64,
    epoch: u32,
    timestamp_ms: i64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_hex: Option<String>,
}

pub(crate) fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let request = TailRequest {
        addr: args.from.clone(),
        offset: args.offset,
        follow: !args.no_follow,
        max_record_bytes: super::check::offline_config().max_record_bytes as usize,
        password: args.password.clone(),
        partition: args.partition,
    };
    let tls = match (&args.cacert, args.tls) {
        (Some(ca), true) => {
            let identity = args.cert.as_deref().zip(args.key.as_deref());
            Some(crate::tls::load_grpc_client(ca, identity)?)
        }
        _ => None,
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let json = args.json;
    // A follower flushes per record so `tail | grep` sees lines as they come; a one-shot
    // read lets the buffer batch them.
    let flush_each = request.follow;
    let result = runtime.block_on(tail_with_tls(&request, tls.as_ref(), |record| {
        if json { write_json(&mut out, record) } else { write_text(&mut out, record) }?;
        if flush_each { out.flush() } else { Ok(()) }
    }));
    match result {
        Ok(()) => {}
        // `msglog tail | head` closing the pipe is a normal way to stop.
        Err(TailError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            // Under TLS 1.3 a node that wants a client certificate takes the handshake and
            // then drops the connection, which the call sees only as a lost stream (under
            // TLS 1.2 the connect error names the alert itself).
            let wants_certificate = match (&e, &args.cacert) {
                (TailError::Stream(_), Some(ca)) if args.tls && args.cert.is_none() => {
                    runtime.block_on(crate::tls::requires_client_certificate(&args.from, ca))
                }
                _ => false,
            };
            let hint = if wants_certificate {
                " (the node requires a client certificate of its CA, as it was started with --tls-ca: give --cert \
                 and --key)"
            } else {
                ""
            };
            return Err(e).with_context(|| format!("tailing {}{hint}", args.from));
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn write_text(out: &mut impl Write, record: &RecordRef<'_>) -> std::io::Result<()> {
    write!(out, "{} {} ", record.offset, record.epoch)?;
    write_escaped(out, record.id)?;
    if record.kind == RecordKind::Set {
        out.write_all(b" ")?;
        write_escaped(out, record.message)?;
    }
    out.write_all(b"\n")
}

fn write_escaped(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    // UTF-8 text passes through; control bytes and bytes that are not UTF-8 are escaped, so
    // a line is always valid UTF-8 and one record stays on one line.
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            let escape: Option<&[u8]> = match b {
                b'\n' => Some(b"\\n"),
                b'\r' => Some(b"\\r"),
                b'\\' => Some(b"\\\\"),
                _ if b.is_ascii_control() => None,
                _ => continue,
            };
            out.write_all(&valid[start..i])?;
            match escape {
                Some(escape) => out.write_all(escape)?,
                None => write!(out, "\\x{b:02x}")?,
            }
            start = i + 1;
        }
        out.write_all(&valid[start..])?;
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// The text if it is UTF-8, else the bytes in hex.
fn text_or_hex(bytes: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(bytes.iter().map(|b| format!("{b:02x}")).collect())),
    }
}

fn write_json(out: &mut impl Write, record: &RecordRef<'_>) -> std::io::Result<()> {
    let (id, id_hex) = text_or_hex(record.id);
    let (message, message_hex) = match record.kind {
        RecordKind::Set => text_or_hex(record.message),
        RecordKind::Delete => (None, None),
    };
    let kind = match record.kind {
        RecordKind::Set => "set",
        RecordKind::Delete => "del",
    };
    let json = JsonRecord {
        offset: record.offset,
        epoch: record.epoch,
        timestamp_ms: record.timestamp_ms,
        kind,
        id,
        id_hex,
        message,
        message_hex,
    };
    // `From` hands back the writer's own error, so a closed pipe stays a BrokenPipe.
    serde_json::to_writer(&mut *out, &json).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::write_escaped;

    #[test]
    fn escapes_bytes_that_would_break_the_line_or_are_not_utf8() {
        let mut out = Vec::new();
        write_escaped(&mut out, "a b\r\n\\\x00é\u{7f}".as_bytes()).unwrap();
        write_escaped(&mut out, b"\xffz\xc3").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a b\\r\\n\\\\\\x00é\\x7f\\xffz\\xc3");
    }
}
