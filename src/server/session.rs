//! A Redis-protocol connection's own state: the protocol version it negotiated, the name
//! it gave itself, and its open transaction. Every RESP request passes through
//! [`Session::handle`], which answers session commands (HELLO, CLIENT, MULTI, EXEC,
//! DISCARD, RESET) itself, queues data commands while a transaction is open, and runs
//! them otherwise. With a password configured, a session starts unauthenticated: only
//! AUTH, HELLO (with its AUTH option), RESET and QUIT are served until a password matches.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::protocol::Command;
use crate::protocol::resp::{
    Args, ClientAttribute, CommandError, Hello, Protocol, RespCommand, RespReply, SessionCommand, is_valid_client_name,
};

use super::Shared;
use super::clients::Registration;
use super::execute::Outcome;
use super::resp::execute_resp;
use super::transaction::{self, Transaction};

/// What HELLO reports as the server's version: a Redis 7 number, so that client
/// libraries that gate features on it treat msglog as a current Redis (README).
const REDIS_VERSION: &str = "7.2.0";

pub(crate) struct Session {
    registration: Registration,
    protocol: Protocol,
    transaction: Option<Transaction>,
    /// A password matched, or none is configured.
    authenticated: bool,
    /// On a node that forwards: a MULTI went to the leader, whose session holds it.
    forwarded_multi: bool,
    /// A RESET ended a forwarded MULTI: the leader's session must go too.
    leader_reset: bool,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Session {
        let authenticated = shared.config.password.is_none();
        Session {
            registration: Registration::new(shared, peer, local),
            protocol: Protocol::Resp2,
            transaction: None,
            authenticated,
            forwarded_multi: false,
            leader_reset: false,
        }
    }

    /// The leader's session for a forwarded connection: its client authenticated on the
    /// node it talks to.
    pub(crate) fn headless(shared: Arc<Shared>) -> Session {
        Session { authenticated: true, ..Session::new(shared, None, None) }
    }

    /// On a node that does not lead: whether this request goes to the leader. Data
    /// commands do, and MULTI with everything up to its EXEC or DISCARD (the leader's
    /// session queues them); what concerns only this connection is answered here.
    pub(crate) fn forwards(&mut self, shared: &Shared, args: Args<'_>) -> bool {
        if !self.authenticated || self.transaction.is_some() {
            return false;
        }
        let command = SessionCommand::parse(args);
        if self.forwarded_multi {
            return match command {
                Ok(Some(SessionCommand::Exec | SessionCommand::Discard)) => {
                    self.forwarded_multi = false;
                    true
                }
                Ok(Some(SessionCommand::Reset)) => false,
                _ => !args.get(0).is_some_and(|name| name.eq_ignore_ascii_case(b"QUIT")),
            };
        }
        match command {
            // With several partitions a transaction runs here, over partitions led here
            // (see `transaction`): each may have its own leader.
            Ok(Some(SessionCommand::Multi)) if shared.partitions.count() > 1 => false,
            Ok(Some(SessionCommand::Multi)) => {
                self.forwarded_multi = true;
                true
            }
            Ok(Some(_)) | Err(_) => false,
            Ok(None) => {
                matches!(RespCommand::parse(args, shared.config.max_message_bytes), Ok(Some(command)) if is_data(&command))
            }
        }
    }

    /// Whether this request takes part in a transaction that runs here: one is open, or it
    /// is a MULTI that opens one here. While earlier requests are held, it must wait for
    /// them, as its EXEC would otherwise overtake them.
    pub(crate) fn transacts_here(&self, shared: &Shared, args: Args<'_>) -> bool {
        self.transaction.is_some()
            || (shared.partitions.count() > 1
                && self.authenticated
                && matches!(SessionCommand::parse(args), Ok(Some(SessionCommand::Multi))))
    }

    /// Whether a RESET just ended a forwarded MULTI (asked once).
    pub(crate) fn take_leader_reset(&mut self) -> bool {
        std::mem::take(&mut self.leader_reset)
    }

    /// The protocol replies are encoded in from now on.
    /// Memory held by an open transaction's queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.transaction.as_ref().map_or(0, Transaction::queued_bytes)
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Carries out one framed request whose bytes are `raw`; `None` for an empty request,
    /// which gets no reply.
    pub(crate) fn handle(&mut self, shared: &Shared, args: Args<'_>, raw: &[u8]) -> Option<Outcome<RespReply>> {
        self.registration.client().touch();
        match SessionCommand::parse(args) {
            Ok(Some(command)) if !self.authenticated && !allowed_before_auth(&command) => {
                return Some(Outcome::reply(CommandError::NoAuth.into()));
            }
            Ok(Some(command)) => return Some(self.session_command(shared, command)),
            Ok(None) => {}
            Err(err) => return Some(self.refuse(err)),
        }
        let command = match RespCommand::parse(args, shared.config.max_message_bytes) {
            // As in Redis, unknown commands and wrong arities are told apart before NOAUTH.
            Ok(Some(command)) if !self.authenticated && !matches!(command, RespCommand::Quit) => {
                return Some(Outcome::reply(CommandError::NoAuth.into()));
            }
            Ok(Some(command)) => command,
            Ok(None) => return None,
            Err(err) => return Some(self.refuse(err)),
        };
        let Some(open) = self.transaction.as_mut().filter(|_| transaction::is_queueable(&command)) else {
            return Some(execute_resp(shared, command));
        };
        let queued = open.queue(shared, &command, raw);
        let count = open.queued();
        Some(match queued {
            Ok(()) => {
                self.registration.client().details().queued = Some(count);
                Outcome::reply(RespReply::Simple("QUEUED"))
            }
            Err(err) => self.refuse(err),
        })
    }

    /// An error answering a request; inside a transaction it also dooms EXEC.
    fn refuse(&mut self, err: impl Into<RespReply>) -> Outcome<RespReply> {
        if let Some(open) = &mut self.transaction {
            open.dirty = true;
        }
        Outcome::reply(err.into())
    }

    fn session_command(&mut self, shared: &Shared, command: SessionCommand<'_>) -> Outcome<RespReply> {
        let in_transaction = self.transaction.is_some();
        let ok = || Outcome::reply(RespReply::Simple("OK"));
        match command {
            SessionCommand::Multi if in_transaction => Outcome::reply(CommandError::NestedMulti.into()),
            SessionCommand::Multi => {
                self.transaction = Some(Transaction::default());
                self.registration.client().details().queued = Some(0);
                ok()
            }
            SessionCommand::Exec => match self.end_transaction() {
                Some(open) => transaction::exec(shared, open),
                None => Outcome::reply(CommandError::ExecWithoutMulti.into()),
            },
            SessionCommand::Discard => match self.end_transaction() {
                Some(_) => ok(),
                None => Outcome::reply(CommandError::DiscardWithoutMulti.into()),
            },
            SessionCommand::Watch => Outcome::reply(CommandError::WatchUnsupported.into()),
            SessionCommand::Reset => {
                self.end_transaction();
                self.leader_reset |= std::mem::take(&mut self.forwarded_multi);
                self.protocol = Protocol::Resp2;
                // Back to the default user, who must authenticate again, as in Redis.
                self.authenticated = shared.config.password.is_none();
                let mut details = self.registration.client().details();
                details.name.clear();
                details.protocol = Protocol::Resp2;
                Outcome::reply(RespReply::Simple("RESET"))
            }
            // The rest concern the connection, not the data: not part of a transaction.
            _ if in_transaction => self.refuse(CommandError::NotInTransaction(command.name().into())),
            SessionCommand::Hello(hello) => self.hello(shared, hello),
            SessionCommand::Auth { user, password } => {
                Outcome::reply(match self.authenticate(shared, user, password) {
                    Ok(()) => RespReply::Simple("OK"),
                    Err(err) => err.into(),
                })
            }
            SessionCommand::Unwatch => ok(),
            SessionCommand::ClientId => Outcome::reply(RespReply::Integer(self.id())),
            SessionCommand::ClientInfo => Outcome::reply(RespReply::Verbatim(self.registration.client().line() + "\n")),
            SessionCommand::ClientList => Outcome::reply(RespReply::Verbatim(shared.metrics.clients.list())),
            SessionCommand::ClientSetName(name) => match self.set_name(name) {
                Ok(()) => ok(),
                Err(err) => Outcome::reply(err.into()),
            },
            SessionCommand::ClientGetName => {
                let name = self.registration.client().details().name.clone();
                Outcome::reply(if name.is_empty() { RespReply::Nil } else { RespReply::Bulk(name.into_bytes()) })
            }
            SessionCommand::ClientSetInfo(attribute, value) => {
                let word = match attribute {
                    ClientAttribute::LibName => "lib-name",
                    ClientAttribute::LibVersion => "lib-ver",
                };
                if !is_valid_client_name(value) {
                    return Outcome::reply(CommandError::BadClientAttribute(word).into());
                }
                let value = String::from_utf8_lossy(value).into_owned();
                let mut details = self.registration.client().details();
                match attribute {
                    ClientAttribute::LibName => details.lib_name = value,
                    ClientAttribute::LibVersion => details.lib_version = value,
                }
                ok()
            }
        }
    }

    /// `HELLO`: checks AUTH and SETNAME before changing anything, then switches protocol
    /// and answers with the server's description, in the new protocol (as Redis does).
    fn hello(&mut self, shared: &Shared, hello: Hello<'_>) -> Outcome<RespReply> {
        match hello.auth {
            Some((user, password)) => {
                if let Err(err) = self.authenticate(shared, Some(user), password) {
                    return Outcome::reply(err.into());
                }
            }
            None if !self.authenticated => return Outcome::reply(CommandError::HelloNoAuth.into()),
            None => {}
        }
        if let Some(name) = hello.name
            && let Err(err) = self.set_name(name)
        {
            return Outcome::reply(err.into());
        }
        if let Some(protocol) = hello.protocol {
            self.protocol = protocol;
            self.registration.client().details().protocol = protocol;
        }
        let role = if shared.role() == "leader" { "master" } else { "replica" };
        let text = |s: &str| RespReply::Bulk(s.as_bytes().to_vec());
        Outcome::reply(RespReply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(REDIS_VERSION)),
            (text("proto"), RespReply::Integer(self.protocol.version())),
            (text("id"), RespReply::Integer(self.id())),
            (text("mode"), text("standalone")),
            (text("role"), text(role)),
            (text("modules"), RespReply::Array(Vec::new())),
        ]))
    }

    /// `AUTH [user] password`, and HELLO's AUTH option. A failure leaves the session as it
    /// was (an authenticated session stays authenticated), as in Redis.
    fn authenticate(&mut self, shared: &Shared, user: Option<&[u8]>, password: &[u8]) -> Result<(), CommandError> {
        let default_user = user.is_none_or(|user| user == b"default");
        match &shared.config.password {
            // Redis's default user without a password takes any password, but the one-word
            // form is told that no password is configured.
            None if user.is_none() => Err(CommandError::AuthWithoutPassword),
            None if default_user => Ok(()),
            Some(expected) if expected.matches(password) && default_user => {
                self.authenticated = true;
                Ok(())
            }
            _ => Err(CommandError::WrongPass),
        }
    }

    fn set_name(&mut self, name: &[u8]) -> Result<(), CommandError> {
        if !is_valid_client_name(name) {
            return Err(CommandError::BadClientName);
        }
        self.registration.client().details().name = String::from_utf8_lossy(name).into_owned();
        Ok(())
    }

    fn end_transaction(&mut self) -> Option<Transaction> {
        self.registration.client().details().queued = None;
        self.transaction.take()
    }

    fn id(&self) -> i64 {
        i64::try_from(self.registration.client().id).unwrap_or(i64::MAX)
    }
}

/// What Redis serves before authentication (its `no-auth` commands).
fn allowed_before_auth(command: &SessionCommand<'_>) -> bool {
    matches!(command, SessionCommand::Auth { .. } | SessionCommand::Hello(_) | SessionCommand::Reset)
}

/// Commands that read or write the data, which run on the leader.
fn is_data(command: &RespCommand<'_>) -> bool {
    matches!(
        command,
        RespCommand::Single(Command::Set { .. } | Command::Get { .. } | Command::Del { .. } | Command::Exists { .. })
            | RespCommand::Del(_)
            | RespCommand::MSet(_)
            | RespCommand::Exists(_)
            | RespCommand::MGet(_)
            | RespCommand::DbSize
            | RespCommand::Scan(_)
            | RespCommand::Keys(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::resp::{RespLimits, RespParser};
    use crate::server::budget::Budget;
    use crate::server::partitions::{PartitionServing, Partitions};
    use crate::server::stats::Metrics;
    use crate::server::{Password, ServerConfig};
    use crate::storage::{Config, Log};

    fn shared(dir: &std::path::Path, password: Option<Password>) -> Arc<Shared> {
        let log = Arc::new(Log::open(dir, Config::default()).expect("open log"));
        Arc::new(Shared {
            partitions: Partitions::new(vec![PartitionServing { partition: 0, log, commits: None, cluster: None }]),
            config: ServerConfig { password, ..ServerConfig::default() },
            metrics: Metrics::default(),
            budget: Budget::new(1 << 30),
            forwarding: None,
        })
    }

    fn request(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        out.into_bytes()
    }

    /// `args` sent as one RESP request, parsed: `f` gets its arguments and its bytes.
    fn parsed<R>(args: &[&str], f: impl FnOnce(Args<'_>, &[u8]) -> R) -> R {
        let bytes = request(args);
        let mut parser = RespParser::new(RespLimits::for_max_message(1024));
        let parsed = parser.next_request(&bytes).expect("valid").expect("complete");
        f(parsed.args, &bytes)
    }

    fn forwards(session: &mut Session, shared: &Shared, args: &[&str]) -> bool {
        parsed(args, |args, _| session.forwards(shared, args))
    }

    fn handle(session: &mut Session, shared: &Shared, args: &[&str]) {
        parsed(args, |args, bytes| {
            session.handle(shared, args, bytes);
        });
    }

    #[test]
    fn data_commands_go_to_the_leader_and_connection_commands_stay() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), None);
        let mut session = Session::new(Arc::clone(&shared), None, None);
        for data in [
            &["SET", "k", "v"][..],
            &["GET", "k"],
            &["DEL", "k", "j"],
            &["EXISTS", "k"],
            &["MSET", "a", "1"],
            &["MGET", "a", "b"],
            &["DBSIZE"],
        ] {
            assert!(forwards(&mut session, &shared, data), "{data:?} goes to the leader");
        }
        for local in [
            &["PING"][..],
            &["ECHO", "x"],
            &["INFO"],
            &["HELLO", "3"],
            &["CLIENT", "ID"],
            &["QUIT"],
            &["EXEC"],
            &["GET"],
            &["NOSUCH"],
        ] {
            assert!(!forwards(&mut session, &shared, local), "{local:?} is answered here");
        }
    }

    #[test]
    fn a_forwarded_multi_takes_everything_up_to_exec_with_it_and_reset_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), None);
        let mut session = Session::new(Arc::clone(&shared), None, None);
        assert!(forwards(&mut session, &shared, &["MULTI"]));
        assert!(forwards(&mut session, &shared, &["PING"]), "queued by the leader's session");
        assert!(forwards(&mut session, &shared, &["HELLO", "3"]), "refused by the leader's session");
        assert!(!forwards(&mut session, &shared, &["QUIT"]), "QUIT closes this connection");
        assert!(forwards(&mut session, &shared, &["EXEC"]));
        assert!(!forwards(&mut session, &shared, &["PING"]), "the transaction is over");

        assert!(forwards(&mut session, &shared, &["MULTI"]));
        assert!(!forwards(&mut session, &shared, &["RESET"]));
        handle(&mut session, &shared, &["RESET"]);
        assert!(session.take_leader_reset(), "the leader's session must be dropped");
        assert!(!session.take_leader_reset(), "asked once");
        assert!(!forwards(&mut session, &shared, &["PING"]));
    }

    #[test]
    fn nothing_is_forwarded_before_authentication_and_a_local_multi_stays_local() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), Some(Password::new("secret").unwrap()));
        let mut session = Session::new(Arc::clone(&shared), None, None);
        assert!(!forwards(&mut session, &shared, &["GET", "k"]), "NOAUTH is answered here");
        handle(&mut session, &shared, &["AUTH", "secret"]);
        assert!(forwards(&mut session, &shared, &["GET", "k"]));
        handle(&mut session, &shared, &["MULTI"]);
        assert!(!forwards(&mut session, &shared, &["GET", "k"]), "a MULTI opened here queues here");
    }
}
