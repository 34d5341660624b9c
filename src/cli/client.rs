//! `msglog client`: one command from the arguments, a prompt on a terminal, or every line
//! of piped input sent pipelined.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::thread;

use anyhow::{Context, bail};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::server::Password;

#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// Server to talk to.
    #[arg(long, env = "MSGLOG_ADDR", default_value = "127.0.0.1:6666")]
    addr: String,
    /// The server's password (its --requirepass), sent with AUTH before anything else;
    /// prefer the environment variable, as a flag shows in `ps`.
    #[arg(long, env = "MSGLOG_PASSWORD", hide_env_values = true, value_parser = super::tail::parse_password)]
    password: Option<Password>,
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
    let stream = match (&args.cacert, args.tls) {
        (Some(ca), true) => crate::tls::connect_client_port(&args.addr, ca)?,
        _ => TcpStream::connect(&args.addr).with_context(|| format!("cannot connect to {}", args.addr))?,
    };
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    if let Some(password) = &args.password {
        authenticate(&stream, password)?;
    }
    if !args.command.is_empty() {
        one_shot(stream, &args.command)
    } else if io::stdin().is_terminal() {
        interactive(stream, &args.addr)
    } else {
        piped(stream)
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
        // History is a convenience; failing to record it is no reason to stop.
        let _ = editor.add_history_entry(line.as_str());
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
