//! `ferrosocks passwd`: hashes a password for the users file, `--user` or the config's
//! `users` list.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;

/// Arguments of `ferrosocks passwd`.
#[derive(Debug, clap::Args)]
pub(crate) struct PasswdArgs {
    /// Print a complete users-file line, NAME:HASH, instead of the hash alone.
    #[arg(long, short = 'u', value_name = "NAME")]
    pub(crate) user: Option<String>,
}

pub(crate) const EXAMPLES: &str = "Examples:
  ferrosocks passwd                          # asks for the password twice, without echo
  ferrosocks passwd --user alice >> users.txt
  printf '%s\\n' \"$PASSWORD\" | ferrosocks passwd

On a terminal the password is read without echo and asked twice; otherwise the first line
of stdin is the password. The output is one line, an Argon2id hash in PHC form
($argon2id$v=19$m=19456,t=2,p=1$SALT$HASH), or NAME:HASH with --user, which a users file,
`serve --user` and the config's `users` list accept in place of NAME:PASSWORD. The server
runs Argon2 once per user and password, then remembers a keyed hash of it, so logins stay
cheap.

Exit codes: 0 the hash was printed; 1 no password could be read, it is not 1 to 255 bytes
(RFC 1929), or the two entries differ; 2 bad arguments.";

pub(crate) fn run(args: &PasswdArgs) -> ExitCode {
    if let Some(name) = &args.user {
        // The line it prints must read back as this one user: a line break would make two
        // lines, a leading '#' a comment.
        if name.is_empty()
            || name.len() > 255
            || name.contains(':')
            || name.chars().any(char::is_control)
            || name.trim_start().starts_with('#')
        {
            eprintln!(
                "ferrosocks passwd: the user name must be 1 to 255 bytes without ':' or control \
                 characters, not starting with '#'"
            );
            return ExitCode::from(2);
        }
    }
    let password = match read_password() {
        Ok(p) => p,
        Err(message) => {
            eprintln!("ferrosocks passwd: {message}");
            return ExitCode::from(1);
        }
    };
    if password.is_empty() || password.len() > 255 {
        eprintln!(
            "ferrosocks passwd: the password is {} bytes long; RFC 1929 allows 1 to 255",
            password.len()
        );
        return ExitCode::from(1);
    }
    // Argon2id with the crate's defaults (m = 19 MiB, t = 2, p = 1), the OWASP baseline.
    let salt = SaltString::generate(&mut OsRng);
    let hash = match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(h) => h.to_string(),
        Err(e) => {
            eprintln!("ferrosocks passwd: hashing failed: {e}");
            return ExitCode::from(1);
        }
    };
    let line = match &args.user {
        Some(name) => format!("{name}:{hash}"),
        None => hash,
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn read_password() -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let second = rpassword::prompt_password("Retype password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != second {
            return Err("the passwords differ".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    if n == 0 {
        return Err("no password on stdin".into());
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(trimmed.to_owned())
}
