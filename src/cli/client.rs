//! `msglog client`: one command from the arguments, a prompt on a terminal, or every line
//! of piped input sent pipelined.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::server::Password;

// `-h` is redis-cli's host, so help is `--help` only.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct ClientArgs {
    /// Server to talk to.
    #[arg(long, env = "MSGLOG_ADDR", default_value = "127.0.0.1:6666")]
    addr: String,
    /// Host to connect to, as redis-cli's `-h`: replaces the host part of --addr.
    #[arg(short = 'h', long)]
    host: Option<String>,
    /// Port to connect to, as redis-cli's `-p`: replaces the port part of --addr.
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// The server's password (its --requirepass), sent with AUTH before anything else;
    /// `-a` as in redis-cli. Prefer the environment variable, as a flag shows in `ps`.
    #[arg(short = 'a', long, env = "MSGLOG_PASSWORD", hide_env_values = true, value_parser = super::password::PasswordParser)]
    password: Option<Password>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Speak TLS to a server started with --tls-cert; needs --cacert.
    #[arg(long, requires = "cacert")]
    tls: bool,
    /// The CA certificate (PEM) that signed the server's certificate, for --tls.
    #[arg(long, env = "MSGLOG_TLS_CA", value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,
    /// A command, e.g. `SET greeting hello world`; its words are joined with single spaces.
    /// Without one, commands are read from stdin.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

pub(crate) fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    refuse_unknown_flag(&args.command)?;
    let addr = server_addr(&args.addr, args.host.as_deref(), args.port)?;
    let stream = match (&args.cacert, args.tls) {
        (Some(ca), true) => crate::tls::connect_client_port(&addr, ca)?,
        _ => TcpStream::connect(&addr).with_context(|| format!("cannot connect to {addr}"))?,
    };
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    // A server that says nothing (an HTTP/1 server waiting for headers) must not hang us.
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).context("setting a read timeout")?;
    check_speaks_msglog(&mut &stream, &addr)?;
    stream.set_read_timeout(None).context("clearing the read timeout")?;
    if let Some(password) = &args.password {
        authenticate(&stream, password)?;
    }
    if !args.command.is_empty() {
        one_shot(stream, &args.command)
    } else if io::stdin().is_terminal() {
        interactive(stream, &addr)
    } else {
        piped(stream)
    }
}

/// How long the first PING may take to be answered before the port is judged not msglog's.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `--addr` with redis-cli's `-h`/`-p` put in place of its host or port.
fn server_addr(addr: &str, host: Option<&str>, port: Option<u16>) -> anyhow::Result<String> {
    if host.is_none() && port.is_none() {
        return Ok(addr.to_string());
    }
    let Some((addr_host, addr_port)) = addr.rsplit_once(':') else {
        bail!("--addr {addr} is not host:port, so -h/-p cannot replace part of it");
    };
    let host = host.unwrap_or(addr_host);
    let port = port.map_or_else(|| addr_port.to_string(), |p| p.to_string());
    // An IPv6 literal needs its brackets back once a port follows it.
    let bracketed = host.contains(':') && !host.starts_with('[');
    Ok(if bracketed { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// Every verb is a word of letters, so a first word starting with `-` is a flag this client
/// does not know (redis-cli's `-n`, `--raw`...): sending it as a command would only puzzle.
fn refuse_unknown_flag(command: &[OsString]) -> anyhow::Result<()> {
    let Some(first) = command.first() else { return Ok(()) };
    let first = first.to_string_lossy();
    if first.starts_with('-') {
        bail!(
            "unknown option '{first}': msglog client takes --addr, -h/--host, -p/--port and -a/--password \
             (see --help); redis-cli's other options have no equivalent here"
        );
    }
    Ok(())
}

/// Sends PING before anything else and insists on msglog's answer, so that pointing the
/// client at another service (the gRPC port, an SSH or HTTP server) fails with a reason
/// instead of printing that service's bytes, and no command of the user's reaches it.
fn check_speaks_msglog(stream: &mut (impl Read + Write), addr: &str) -> anyhow::Result<()> {
    stream.write_all(b"PING\n").with_context(|| format!("sending to {addr}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 256];
    // msglog answers PING with one line and sends nothing else unasked, so reading in
    // chunks cannot take bytes belonging to a later reply. Its refusals (protected mode)
    // run to a few hundred bytes; a line this long is read whole.
    while !answer.contains(&b'\n') && answer.len() < MAX_PROBE_ANSWER && could_be_msglog(&answer) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                bail!(
                    "{addr} does not speak msglog's protocol (no answer to PING in {} s: is that msglog's client port?)",
                    PROBE_TIMEOUT.as_secs()
                )
            }
            Err(err) => return Err(err).with_context(|| format!("reading from {addr}")),
        }
    }
    let line = answer.strip_suffix(b"\n").map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    match line {
        Some(b"PONG") => Ok(()),
        // NOAUTH before AUTH is msglog speaking; any other error (a full server, one
        // shutting down) is the server's to tell.
        Some(line) if line.starts_with(b"ERR NOAUTH") => Ok(()),
        Some(line) if line.starts_with(b"ERR ") && could_be_msglog(line) => {
            bail!("{addr} refused the connection: {}", String::from_utf8_lossy(line))
        }
        _ if answer.is_empty() => bail!("{addr} closed the connection without answering PING"),
        _ => bail!("{addr} does not speak msglog's protocol (it answered with {})", foreign(&answer)),
    }
}

/// The longest answer to the PING probe read before judging it.
const MAX_PROBE_ANSWER: usize = 4096;

/// msglog's text replies to PING are `PONG` or `ERR <reason>`: printable UTF-8 lines.
fn could_be_msglog(answer: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(answer) else { return false };
    let line = text.trim_end_matches(['\r', '\n']);
    let printable = !line.chars().any(char::is_control);
    let prefix = |reply: &str| reply.starts_with(line) || line.starts_with(reply);
    printable && (prefix("PONG") || prefix("ERR "))
}

/// Names what answered, from the first bytes it sent.
fn foreign(answer: &[u8]) -> String {
    // An HTTP/2 server's first frame is SETTINGS (type 4) on stream 0, or GOAWAY (type 7)
    // once it has read a bad preface: 3 bytes of length, type, flags, 4 bytes of stream.
    let http2_frame = answer.len() >= 9 && matches!(answer[3], 4 | 7) && answer[5..9] == [0, 0, 0, 0];
    if http2_frame {
        "HTTP/2 bytes: is that the --grpc-listen port?".to_string()
    } else if answer.starts_with(b"HTTP/") {
        "an HTTP response: is that the --metrics-listen port?".to_string()
    } else if answer.starts_with(b"SSH-") {
        "an SSH banner".to_string()
    } else if answer.starts_with(b"+") || answer.starts_with(b"-") {
        "a RESP reply: is that a Redis server? use redis-cli".to_string()
    } else {
        let shown: String =
            answer.iter().take(32).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
        format!("\"{shown}\"")
    }
}

/// AUTH before the user's commands, so that their replies are theirs alone. Reads the
/// reply byte by byte: a buffered reader could swallow bytes meant for the next reader.
fn authenticate(stream: &TcpStream, password: &Password) -> anyhow::Result<()> {
    let mut writer = stream;
    writer.write_all(format!("AUTH {}\n", password.reveal()).as_bytes()).context("sending AUTH")?;
    let mut reply = Vec::new();
    let mut reader = stream;
    while !reply.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        if io::Read::read(&mut reader, &mut byte).context("reading the reply to AUTH")? == 0 {
            bail!("the server closed the connection after AUTH");
        }
        reply.push(byte[0]);
    }
    let reply = String::from_utf8_lossy(&reply).trim_end().to_string();
    match reply.as_str() {
        "OK" => Ok(()),
        _ => bail!("AUTH failed: {reply}"),
    }
}

/// Sends one command, prints its reply, and fails (exit 1) on an `ERR` reply.
fn one_shot(stream: TcpStream, words: &[OsString]) -> anyhow::Result<ExitCode> {
    let mut line = words.iter().map(|w| w.as_encoded_bytes()).collect::<Vec<_>>().join(&b' ');
    if line.contains(&b'\n') || line.contains(&b'\r') {
        bail!("a command cannot contain a line break");
    }
    line.push(b'\n');
    let mut writer = &stream;
    writer.write_all(&line).context("sending the command")?;
    let mut reader = BufReader::new(&stream);
    let mut reply = Vec::new();
    if !read_reply(&mut reader, &mut reply).context("reading the reply")? {
        bail!("the server closed the connection without replying");
    }
    print_reply(&reply)?;
    Ok(exit_code(&reply))
}

/// A prompt with line editing and history; every line is one command.
fn interactive(stream: TcpStream, addr: &str) -> anyhow::Result<ExitCode> {
    let mut editor = DefaultEditor::new().context("starting the line editor")?;
    let history = history_file();
    if let Some(path) = &history {
        // A first run has no file yet; an unreadable one only costs the old entries.
        let _ = editor.load_history(path);
    }
    let prompt = format!("{addr}> ");
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut reply = Vec::new();
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => return Ok(ExitCode::SUCCESS),
            Err(err) => return Err(err).context("reading from the terminal"),
        };
        if line.trim().is_empty() {
            continue;
        }
        // History is a convenience; failing to record it is no reason to stop. AUTH
        // lines hold a password, so they stay out of it (as in redis-cli).
        if !line.trim_start().get(..5).is_some_and(|verb| verb.eq_ignore_ascii_case("AUTH ")) {
            let _ = editor.add_history_entry(line.as_str());
            if let Some(path) = &history {
                let _ = editor.append_history(path);
            }
        }
        writer.write_all(format!("{line}\n").as_bytes()).context("sending the command")?;
        if !read_reply(&mut reader, &mut reply).context("reading the reply")? {
            bail!("the server closed the connection");
        }
        print_reply(&reply)?;
        if reply == b"BYE" {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// `~/.msglog_history`; none without a home (a service account, a bare container).
fn history_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
    Some(PathBuf::from(home).join(".msglog_history"))
}

/// Streams stdin to the server while printing replies, on two threads, so that neither side
/// fills its socket buffer waiting for the other. Exit 1 if any reply was an error.
fn piped(stream: TcpStream) -> anyhow::Result<ExitCode> {
    let write_half = stream.try_clone().context("cloning the connection")?;
    let sender = thread::spawn(move || send_stdin(write_half));

    let mut reader = BufReader::new(&stream);
    let mut stdout = BufWriter::new(io::stdout().lock());
    let mut reply = Vec::new();
    let mut any_error = false;
    while read_reply(&mut reader, &mut reply).context("reading replies")? {
        any_error |= reply.starts_with(b"ERR");
        reply.push(b'\n');
        if let Err(err) = stdout.write_all(&reply) {
            return stdout_failure(err);
        }
    }
    if let Err(err) = stdout.flush() {
        return stdout_failure(err);
    }
    // The server closed the connection. If the sender is still blocked on stdin (the input
    // held a QUIT, say), there is nothing left to send it to, so do not wait for it.
    if sender.is_finished() {
        match sender.join() {
            Ok(sent) => sent.context("sending commands")?,
            Err(_) => bail!("the sending thread panicked"),
        }
    }
    Ok(if any_error { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Copies stdin to the server, ending an unterminated last line (the server only answers
/// complete lines), then half-closes so the server sees the end and closes after replying.
fn send_stdin(stream: TcpStream) -> io::Result<()> {
    let mut input = io::stdin().lock();
    let mut writer = BufWriter::with_capacity(64 * 1024, &stream);
    let mut last = b'\n';
    let sent = (|| {
        loop {
            let chunk = input.fill_buf()?;
            let Some(&final_byte) = chunk.last() else { break };
            writer.write_all(chunk)?;
            last = final_byte;
            let n = chunk.len();
            input.consume(n);
        }
        if last != b'\n' {
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        stream.shutdown(Shutdown::Write)
    })();
    match sent {
        // The server closed first (after QUIT); the replies say what happened.
        Err(err) if matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => Ok(()),
        other => other,
    }
}

/// Reads one reply line into `reply`, without its `\r\n`. `false` at end of stream.
fn read_reply(reader: &mut impl BufRead, reply: &mut Vec<u8>) -> io::Result<bool> {
    reply.clear();
    if reader.read_until(b'\n', reply)? == 0 {
        return Ok(false);
    }
    if reply.ends_with(b"\n") {
        reply.pop();
        if reply.ends_with(b"\r") {
            reply.pop();
        }
    }
    Ok(true)
}

fn print_reply(reply: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(reply).and_then(|()| stdout.write_all(b"\n")).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(err).context("writing to stdout"),
    }
}

/// A reader that went away (`| head`) is not an error of ours.
fn stdout_failure(err: io::Error) -> anyhow::Result<ExitCode> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        return Ok(ExitCode::SUCCESS);
    }
    Err(err).context("writing to stdout")
}

fn exit_code(reply: &[u8]) -> ExitCode {
    if reply.starts_with(b"ERR") { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's scripted answer; what the client writes is dropped.
    struct Answer(io::Cursor<Vec<u8>>);

    impl Read for Answer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Answer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn probe(answer: &[u8]) -> anyhow::Result<()> {
        check_speaks_msglog(&mut Answer(io::Cursor::new(answer.to_vec())), "127.0.0.1:1")
    }

    #[test]
    fn a_long_refusal_is_shown_whole() {
        let refusal = format!("ERR DENIED msglog is in protected mode: {}; listen on 127.0.0.1", "x".repeat(400));
        let err = probe(format!("{refusal}\r\n").as_bytes()).unwrap_err().to_string();
        assert!(err.contains("refused the connection") && err.ends_with("listen on 127.0.0.1"), "{err}");
        assert!(probe(b"PONG\r\n").is_ok());
        let foreign = probe(b"SSH-2.0-OpenSSH\r\n").unwrap_err().to_string();
        assert!(foreign.contains("does not speak msglog's protocol"), "{foreign}");
    }
}
