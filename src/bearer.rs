//! The password on the gRPC port: a caller presents it as `authorization: Bearer <pw>`
//! metadata, and every service (replication, forwarding, the quorum) checks it here, so
//! they refuse alike and none can print what was presented.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::server::Password;

const AUTHORIZATION: &str = "authorization";
const BEARER: &str = "Bearer ";

/// The metadata value that presents `password`, made once per caller.
pub fn value(password: Option<&Password>) -> Option<MetadataValue<Ascii>> {
    // A password is printable ASCII (checked when made), so it is always a valid value.
    password.and_then(|p| format!("{BEARER}{}", p.reveal()).parse().ok())
}

/// `request` presenting `value`, if any.
pub fn present<T>(request: &mut Request<T>, value: Option<&MetadataValue<Ascii>>) {
    if let Some(value) = value {
        request.metadata_mut().insert(AUTHORIZATION, value.clone());
    }
}

/// What a refused caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    Nothing,
    WrongPassword,
}

impl Presented {
    /// For logs: whether anything was presented (never what).
    pub fn any(self) -> bool {
        self == Presented::WrongPassword
    }

    fn problem(self) -> &'static str {
        match self {
            Presented::Nothing => "no password was presented",
            Presented::WrongPassword => "the password presented is not the cluster's",
        }
    }

    /// The refusal a caller sees: `node` requires the password for `call`, why this
    /// caller failed, and `remedy`.
    pub fn refusal(self, node: &str, call: &str, remedy: &str) -> Status {
        Status::unauthenticated(format!(
            "{node} requires the cluster's password for {call} ({}): {remedy}",
            self.problem()
        ))
    }
}

/// Whether `request` presents `password`; always `Ok` when there is none.
pub fn check<T>(request: &Request<T>, password: Option<&Password>) -> Result<(), Presented> {
    let Some(password) = password else { return Ok(()) };
    let presented = request.metadata().get(AUTHORIZATION).and_then(|value| value.to_str().ok());
    match presented.map(|value| value.strip_prefix(BEARER)) {
        Some(Some(token)) if password.matches(token.as_bytes()) => Ok(()),
        Some(_) => Err(Presented::WrongPassword),
        None => Err(Presented::Nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(password: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        let password = password.map(|p| Password::new(p).unwrap());
        present(&mut request, value(password.as_ref()).as_ref());
        request
    }

    #[test]
    fn only_the_configured_password_passes() {
        let password = Password::new("s3cret").unwrap();
        assert_eq!(check(&request(Some("s3cret")), Some(&password)), Ok(()));
        assert_eq!(check(&request(Some("other")), Some(&password)), Err(Presented::WrongPassword));
        assert_eq!(check(&request(None), Some(&password)), Err(Presented::Nothing));
        assert_eq!(check(&request(None), None), Ok(()), "no password configured");
    }

    #[test]
    fn a_refusal_never_shows_what_was_presented() {
        let status = Presented::WrongPassword.refusal("n1", "Fetch", "start every node with the same --requirepass");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "n1 requires the cluster's password for Fetch (the password presented is not the cluster's): start every \
             node with the same --requirepass"
        );
    }
}
