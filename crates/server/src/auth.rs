//! Authentication: which methods the server offers, in which order, and the user table.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use ferrosocks_proto::{Method, Password, UserPassRequest};
use subtle::ConstantTimeEq;

/// An authentication method the server can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `X'00'` NO AUTHENTICATION REQUIRED.
    None,
    /// `X'02'` USERNAME/PASSWORD (RFC 1929).
    UserPass,
}

impl AuthMethod {
    /// The wire code.
    pub fn method(self) -> Method {
        match self {
            AuthMethod::None => Method::NO_AUTH,
            AuthMethod::UserPass => Method::USER_PASS,
        }
    }
}

impl std::str::FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(AuthMethod::None),
            "userpass" | "username" | "password" => Ok(AuthMethod::UserPass),
            other => Err(format!(
                "unknown auth method {other:?} (expected \"none\" or \"userpass\")"
            )),
        }
    }
}

/// How a user's password is stored.
#[derive(Clone)]
pub enum Credential {
    /// The password itself, compared in constant time.
    Plain(Password),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

/// The table of users allowed to log in with username/password.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<Vec<u8>, Credential>,
}

/// A problem in a `NAME:PASS` entry or a users file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", .line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct UsersError {
    /// The 1-based line in the users file, when the entry came from one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl Users {
    /// No users.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Adds or replaces a user with a plain password.
    pub fn insert(&mut self, name: impl Into<Vec<u8>>, credential: Credential) {
        self.users.insert(name.into(), credential);
    }

    /// Every user and credential, consuming the table (to merge tables).
    pub fn into_entries(self) -> impl Iterator<Item = (Vec<u8>, Credential)> {
        self.users.into_iter()
    }

    /// Parses one `NAME:PASS` entry (the password may itself contain `:`).
    pub fn parse_entry(entry: &str) -> Result<(String, Credential), UsersError> {
        let (name, pass) = entry.split_once(':').ok_or_else(|| UsersError {
            line: None,
            message: "expected NAME:PASSWORD".into(),
        })?;
        if name.is_empty() || name.len() > 255 {
            return Err(UsersError {
                line: None,
                message: "the user name must be 1 to 255 bytes (RFC 1929)".into(),
            });
        }
        if pass.is_empty() || pass.len() > 255 {
            return Err(UsersError {
                line: None,
                message: format!("the password of {name:?} must be 1 to 255 bytes (RFC 1929)"),
            });
        }
        Ok((
            name.to_owned(),
            Credential::Plain(Password::new(pass.as_bytes())),
        ))
    }

    /// Parses a users file: one `NAME:PASSWORD` per line; blank lines and lines starting
    /// with `#` are ignored.
    pub fn parse_file_contents(text: &str) -> Result<Users, UsersError> {
        let mut users = Users::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (name, cred) = Self::parse_entry(line).map_err(|e| UsersError {
                line: Some(i + 1),
                message: e.message,
            })?;
            users.insert(name, cred);
        }
        Ok(users)
    }

    /// Reads and parses a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersError {
            line: None,
            message: format!("cannot read users file {}: {e}", path.display()),
        })?;
        Self::parse_file_contents(&text)
    }

    /// Checks a username/password pair. The comparison takes the same time whether the user
    /// exists or not and wherever the password differs.
    pub fn verify(&self, request: &UserPassRequest) -> bool {
        // An unknown user is still compared against a dummy so that timing does not reveal
        // which user names exist.
        let dummy = Credential::Plain(Password::new(Vec::new()));
        let (known, credential) = match self.users.get(&request.username) {
            Some(c) => (true, c),
            None => (false, &dummy),
        };
        let matches = match credential {
            Credential::Plain(expected) => padded_eq(expected.expose(), request.password.expose()),
        };
        known & matches
    }
}

/// Constant-time equality of two secrets of at most 255 bytes each (RFC 1929's limit). Both
/// are laid out with their length in front in a fixed 256-byte block, so neither the length
/// nor the position of the first difference shows in the time taken.
fn padded_eq(a: &[u8], b: &[u8]) -> bool {
    fn block(s: &[u8]) -> Option<[u8; 256]> {
        let mut out = [0u8; 256];
        out[0] = u8::try_from(s.len()).ok()?;
        out[1..=s.len()].copy_from_slice(s);
        Some(out)
    }
    match (block(a), block(b)) {
        (Some(a), Some(b)) => a.ct_eq(&b).into(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(user: &str, pass: &str) -> UserPassRequest {
        UserPassRequest {
            username: user.as_bytes().to_vec(),
            password: Password::new(pass.as_bytes()),
        }
    }

    #[test]
    fn verify_accepts_only_the_right_pair() {
        let users = Users::parse_file_contents("# comment\n\nalice:s3cr:et\nbob:pw\n").unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify(&req("alice", "s3cr:et")));
        assert!(users.verify(&req("bob", "pw")));
        assert!(!users.verify(&req("bob", "pw2")));
        assert!(!users.verify(&req("bob", "p")));
        assert!(!users.verify(&req("carol", "")));
        assert!(!users.verify(&req("carol", "pw")));
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let err = Users::parse_file_contents("a:b\nnocolon\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with("line 2: "));
    }

    #[test]
    fn credential_debug_hides_the_password() {
        let (_, cred) = Users::parse_entry("u:hunter2").unwrap();
        assert!(!format!("{cred:?}").contains("hunter2"));
    }
}
