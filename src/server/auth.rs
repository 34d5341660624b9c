//! Who may talk to the server: the password (`--requirepass`) and protected mode.
//!
//! The password is kept only as its SHA-256 digest, and candidates are compared digest to
//! digest in constant time: the time a wrong guess takes says nothing about how much of
//! it was right, and the digests have equal length whatever the lengths of the inputs.
//! Nothing here can print the password: [`Password`]'s `Debug` shows neither it nor its
//! digest, so configs that hold one can still be logged. A follower presents the password
//! to its leader, so the text itself is kept too.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The password clients must give (`AUTH`) before anything else, and followers and
/// consumers must present to the replication port.
#[derive(Clone)]
pub struct Password {
    digest: [u8; 32],
    text: Arc<str>,
}

/// Why a password cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPassword {
    #[error("must not be empty (leave it unset for no password)")]
    Empty,
    /// It travels in a gRPC header and as one word of a text-protocol line.
    #[error("may hold only printable ASCII without spaces")]
    Unprintable,
}

impl Password {
    pub fn new(password: &str) -> Result<Password, InvalidPassword> {
        if password.is_empty() {
            return Err(InvalidPassword::Empty);
        }
        if !password.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidPassword::Unprintable);
        }
        Ok(Password { digest: digest(password.as_bytes()), text: password.into() })
    }

    /// The password itself, to present to another node; never to be logged.
    pub(crate) fn reveal(&self) -> &str {
        &self.text
    }

    /// Whether `candidate` is the password, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let theirs = digest(candidate);
        let difference = self.digest.iter().zip(theirs.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Read through `black_box` so the fold is not turned into an early-exit compare.
        std::hint::black_box(difference) == 0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether a client is let in at all, before it says anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Protected mode: no password, a listen address other clients can reach, and a
    /// client that is not on this machine.
    Protected,
}

/// Redis's protected mode: a server without a password that listens beyond loopback
/// serves only loopback clients, so that `--listen 0.0.0.0` alone does not open the data
/// to the network. `listen` is the address the listener was bound to (not the address a
/// client reached: on 0.0.0.0 a loopback client reaches 127.0.0.1).
pub fn admission(password: Option<&Password>, protected_mode: bool, listen: IpAddr, peer: SocketAddr) -> Admission {
    let exposed = !is_loopback(listen);
    match password.is_none() && protected_mode && exposed && !is_loopback(peer.ip()) {
        true => Admission::Protected,
        false => Admission::Admit,
    }
}

/// Loopback, including IPv4 loopback seen through an IPv6 socket (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The one line a client refused by protected mode gets: what happened and both fixes.
pub const PROTECTED_MODE_REFUSAL: &str = "DENIED msglog is in protected mode: it listens on a non-loopback address \
     without a password, so it serves only clients on this machine. Either set a password (--requirepass or \
     MSGLOG_PASSWORD) and AUTH with it, or listen on 127.0.0.1 only; --protected-mode no serves everyone \
     without a password (only on a trusted network)";

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_password_matches_only_itself() {
        let password = Password::new("s3cret").unwrap();
        assert!(password.matches(b"s3cret"));
        assert!(!password.matches(b"s3cre"));
        assert!(!password.matches(b"s3cret "));
        assert!(!password.matches(b""));
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        assert_eq!(Password::new("").unwrap_err(), InvalidPassword::Empty);
        assert_eq!(Password::new("two words").unwrap_err(), InvalidPassword::Unprintable);
        assert_eq!(Password::new("caf\u{e9}").unwrap_err(), InvalidPassword::Unprintable);
    }

    #[test]
    fn protected_mode_refuses_only_remote_clients_of_an_exposed_server_without_a_password() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let remote = addr("10.1.2.3:5000");
        let local = addr("127.0.0.1:5000");
        let password = Password::new("pw").unwrap();
        assert_eq!(admission(None, true, any, remote), Admission::Protected);
        assert_eq!(admission(None, true, "::".parse().unwrap(), addr("[2001:db8::1]:5000")), Admission::Protected);
        assert_eq!(admission(None, true, any, local), Admission::Admit);
        assert_eq!(admission(None, true, any, addr("[::ffff:127.0.0.1]:5000")), Admission::Admit);
        assert_eq!(admission(None, true, any, addr("[::1]:5000")), Admission::Admit);
        assert_eq!(admission(Some(&password), true, any, remote), Admission::Admit);
        assert_eq!(admission(None, false, any, remote), Admission::Admit);
        assert_eq!(admission(None, true, loopback, remote), Admission::Admit);
    }
}
