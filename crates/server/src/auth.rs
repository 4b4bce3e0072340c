//! Authentication: which methods the server offers, in which order, and the user table.
//!
//! # Hashed passwords
//! A users entry may hold an Argon2 hash in PHC form (`alice:$argon2id$v=19$m=19456,t=2,p=1$…`,
//! as `ferrosocks passwd` prints) instead of the password. Argon2 is slow on purpose (tens of
//! milliseconds and ~19 MiB per check with the default parameters), so it must not run for
//! every login of a busy user:
//!
//! - After a user's first successful Argon2 check, the table remembers a BLAKE3 hash of the
//!   password *keyed with a random per-process key* ([`VerifiedCache`]). Later logins compare
//!   the keyed hash of the presented password with it in constant time and skip Argon2.
//!   Without the key, which never leaves the process, a cached value is useless for guessing
//!   passwords offline.
//! - Only a successful Argon2 check writes the cache, so a wrong password never gets in; it
//!   costs a full Argon2 check every time, which is what makes guessing slow.
//! - The cache holds at most one entry per hashed user (a PHC hash matches one password) and
//!   never more than [`MAX_CACHED`]; a reload builds a new table with an empty cache.
//! - Argon2 checks run on tokio's blocking pool ([`Users::verify_async`]), at most one per
//!   core at a time and within [`ARGON2_MEMORY_BUDGET_KIB`] together, so they neither stall
//!   the sessions sharing a worker thread nor take more than that memory under a flood of
//!   wrong passwords, whatever the number of cores.
//! - An unknown user name is checked against another user's hash, so the time taken does not
//!   tell which names exist.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHashString, PasswordVerifier};
use argon2::Argon2;
use ferrosocks_proto::{Method, Password, UserPassRequest};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The most successful hashed-password checks remembered by one users table.
pub const MAX_CACHED: usize = 65_536;

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
    /// An Argon2 hash in PHC string form (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    Hashed(PasswordHashString),
}

/// The most memory an accepted Argon2 hash may ask for per check: 256 MiB (the default
/// hash of `ferrosocks passwd` takes 19 MiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 18;
/// The most memory all Argon2 checks running at once may take: 512 MiB, two checks of the
/// largest hash accepted or 26 of `ferrosocks passwd`'s. Any client can start checks (an
/// unknown name is checked against a user's hash too), and up to one per core runs at
/// once: without this, a flood of logins on a machine of 64 cores could take 16 GiB.
pub const ARGON2_MEMORY_BUDGET_KIB: u32 = 2 * MAX_ARGON2_MEMORY_KIB;
/// The most work (memory in KiB × passes) an accepted hash may ask for per check: about
/// two seconds of one core, fifty times the default's.
pub const MAX_ARGON2_WORK: u64 = 1 << 21;
/// The most lanes an accepted hash may ask for.
pub const MAX_ARGON2_LANES: u32 = 16;

impl Credential {
    /// Parses a PHC string as an Argon2 hash whose parameters Argon2 accepts and whose cost
    /// per check is bounded (see [`MAX_ARGON2_WORK`]).
    pub fn hashed(phc: &str) -> Result<Credential, String> {
        let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC hash string: {e}"))?;
        match hash.algorithm.as_str() {
            "argon2id" | "argon2i" | "argon2d" => {}
            other => {
                return Err(format!(
                    "unsupported hash algorithm {other:?} (expected argon2id)"
                ))
            }
        }
        let params = argon2::Params::try_from(&hash)
            .map_err(|e| format!("invalid Argon2 parameters: {e}"))?;
        // Every login attempt, even by an unknown name (checked against some user's hash),
        // runs Argon2 with these parameters: a hash that asks for gigabytes or minutes would
        // let any client abort the server (a failed allocation) or tie up its checks.
        let (memory, passes, lanes) = (params.m_cost(), params.t_cost(), params.p_cost());
        if memory > MAX_ARGON2_MEMORY_KIB
            || u64::from(memory) * u64::from(passes) > MAX_ARGON2_WORK
            || lanes > MAX_ARGON2_LANES
        {
            return Err(format!(
                "Argon2 parameters m={memory},t={passes},p={lanes} cost too much per login \
                 (at most m={MAX_ARGON2_MEMORY_KIB} KiB, m×t={MAX_ARGON2_WORK}, \
                 p={MAX_ARGON2_LANES}; `ferrosocks passwd` uses m=19456,t=2,p=1)"
            ));
        }
        if hash.hash.is_none() {
            return Err("the PHC string has no hash part".into());
        }
        Ok(Credential::Hashed(hash.serialize()))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Plain(<redacted>)"),
            // The hash is not the password, but it is what an offline guesser needs.
            Credential::Hashed(_) => f.write_str("Hashed(<redacted>)"),
        }
    }
}

/// Keyed hashes of passwords that passed an Argon2 check, one per user (see the module docs).
pub struct VerifiedCache {
    /// Random per process (per table, in fact); never leaves memory.
    key: [u8; 32],
    entries: Mutex<HashMap<Vec<u8>, [u8; 32]>>,
    /// Argon2 checks run so far, for tests and diagnostics.
    argon2_checks: AtomicU64,
    /// Bounds concurrent Argon2 checks (CPU) in [`Users::verify_async`]: one per core.
    permits: Arc<Semaphore>,
    /// Bounds their memory: one permit per KiB a running check's hash asks for, out of
    /// `memory_budget_kib`.
    memory_kib: Arc<Semaphore>,
    memory_budget_kib: u32,
    /// Checks running now, and the most that ran at once (tests and diagnostics).
    running: AtomicU64,
    most_running: AtomicU64,
}

impl VerifiedCache {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_limits(cores, ARGON2_MEMORY_BUDGET_KIB)
    }

    fn with_limits(checks: usize, memory_kib: u32) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key,
            entries: Mutex::new(HashMap::new()),
            argon2_checks: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(checks)),
            memory_kib: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_budget_kib: memory_kib,
            running: AtomicU64::new(0),
            most_running: AtomicU64::new(0),
        }
    }

    fn keyed(&self, password: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, password).as_bytes()
    }

    fn lookup(&self, user: &[u8]) -> Option<[u8; 32]> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .copied()
    }

    fn remember(&self, user: &[u8], keyed: [u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() < MAX_CACHED || entries.contains_key(user) {
            entries.insert(user.to_vec(), keyed);
        }
    }
}

impl fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("key", &"<redacted>")
            .field(
                "entries",
                &self.entries.lock().unwrap_or_else(|e| e.into_inner()).len(),
            )
            .finish()
    }
}

/// The table of users allowed to log in with username/password.
#[derive(Debug, Clone)]
pub struct Users {
    users: HashMap<Vec<u8>, Credential>,
    /// A hash from the table, checked for unknown user names so they take as long as
    /// known ones.
    decoy: Option<PasswordHashString>,
    /// Shared by clones of this table; a new table (a reload) starts empty.
    verified: Arc<VerifiedCache>,
}

impl Default for Users {
    fn default() -> Self {
        Self {
            users: HashMap::new(),
            decoy: None,
            verified: Arc::new(VerifiedCache::new()),
        }
    }
}

/// What is left to do for a login after the cheap checks.
enum Check {
    /// Decided without Argon2.
    Done(bool),
    /// Needs an Argon2 check of `password` against `hash`.
    Argon2(Argon2Check),
}

struct Argon2Check {
    hash: PasswordHashString,
    password: Password,
    /// The user and keyed password to remember on success; `None` for an unknown user.
    remember: Option<(Vec<u8>, [u8; 32])>,
    cache: Arc<VerifiedCache>,
}

impl Argon2Check {
    /// The slow part: runs Argon2 and, on success for a known user, fills the cache.
    /// The memory the check will take, in KiB (the hash's `m`; accepted hashes are
    /// checked at load to ask for at most [`MAX_ARGON2_MEMORY_KIB`]).
    fn memory_kib(&self) -> u32 {
        argon2::Params::try_from(&self.hash.password_hash())
            .map_or(MAX_ARGON2_MEMORY_KIB, |p| p.m_cost())
            .min(MAX_ARGON2_MEMORY_KIB)
    }

    fn run(self) -> bool {
        self.cache.argon2_checks.fetch_add(1, Ordering::Relaxed);
        let now = self.cache.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.cache.most_running.fetch_max(now, Ordering::Relaxed);
        let ok = Argon2::default()
            .verify_password(self.password.expose(), &self.hash.password_hash())
            .is_ok();
        self.cache.running.fetch_sub(1, Ordering::Relaxed);
        match self.remember {
            Some((user, keyed)) if ok => {
                self.cache.remember(&user, keyed);
                true
            }
            // Unknown user: checked only to take the same time; never accepted.
            _ => false,
        }
    }
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

    /// Adds or replaces a user.
    pub fn insert(&mut self, name: impl Into<Vec<u8>>, credential: Credential) {
        if let Credential::Hashed(hash) = &credential {
            self.decoy.get_or_insert_with(|| hash.clone());
        }
        self.users.insert(name.into(), credential);
    }

    /// Every user and credential, consuming the table (to merge tables).
    pub fn into_entries(self) -> impl Iterator<Item = (Vec<u8>, Credential)> {
        self.users.into_iter()
    }

    /// Parses one `NAME:PASS` entry (the password may itself contain `:`). A password that
    /// starts with `$argon2` is an Argon2 PHC hash, as `ferrosocks passwd` prints.
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
        if pass.starts_with("$argon2") {
            let cred = Credential::hashed(pass).map_err(|e| UsersError {
                line: None,
                message: format!("the password hash of {name:?}: {e}"),
            })?;
            return Ok((name.to_owned(), cred));
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

    /// Parses a users file: one `NAME:PASSWORD` or `NAME:$argon2id$…` per line; blank lines
    /// and lines starting with `#` are ignored.
    pub fn parse_file_contents(text: &str) -> Result<Users, UsersError> {
        let mut users = Users::new();
        // A byte-order mark (editors on Windows write one) would become part of the first
        // name, or turn a first-line comment into a user.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (name, cred) = Self::parse_entry(line).map_err(|e| UsersError {
                line: Some(i + 1),
                message: e.message,
            })?;
            // Which of two passwords counts would be an accident of order.
            if users.users.contains_key(name.as_bytes()) {
                return Err(UsersError {
                    line: Some(i + 1),
                    message: format!("user {name:?} is listed twice"),
                });
            }
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

    /// Checks a username/password pair, running any Argon2 check on this thread. The
    /// comparison takes the same time whether the user exists or not and wherever the
    /// password differs. Async callers use [`Users::verify_async`].
    pub fn verify(&self, request: &UserPassRequest) -> bool {
        match self.check(request) {
            Check::Done(verdict) => verdict,
            Check::Argon2(job) => job.run(),
        }
    }

    /// [`Users::verify`] for async callers: plain passwords and remembered hashed ones are
    /// checked at once; an Argon2 check runs on the blocking pool, at most one per core at
    /// a time, and only while all running checks' memory stays within
    /// [`ARGON2_MEMORY_BUDGET_KIB`].
    pub async fn verify_async(&self, request: &UserPassRequest) -> bool {
        match self.check(request) {
            Check::Done(verdict) => verdict,
            // Boxed so that a session future, which holds this one during the handshake,
            // stays small on the common path.
            Check::Argon2(job) => {
                Box::pin(async move {
                    // Always in this order (core, then memory), so no two checks wait for
                    // each other.
                    let Ok(_permit) = job.cache.permits.clone().acquire_owned().await else {
                        return false;
                    };
                    // A check larger than the whole budget runs alone rather than never.
                    let memory = job.memory_kib().min(job.cache.memory_budget_kib);
                    let Ok(_memory) = job
                        .cache
                        .memory_kib
                        .clone()
                        .acquire_many_owned(memory)
                        .await
                    else {
                        return false;
                    };
                    tokio::task::spawn_blocking(move || job.run())
                        .await
                        .unwrap_or(false)
                })
                .await
            }
        }
    }

    /// How many Argon2 checks this table (and its clones) has run.
    pub fn argon2_checks(&self) -> u64 {
        self.verified.argon2_checks.load(Ordering::Relaxed)
    }

    /// Whether `user` has a cached value and `password` matches it (tests only).
    #[cfg(test)]
    fn verify_cached_only_for_test(&self, user: &str, password: &str) -> Option<bool> {
        let known = self.verified.lookup(user.as_bytes())?;
        Some(bool::from(
            known.ct_eq(&self.verified.keyed(password.as_bytes())),
        ))
    }

    /// The cheap part of a check: everything except Argon2.
    fn check(&self, request: &UserPassRequest) -> Check {
        let presented = request.password.expose();
        match self.users.get(&request.username) {
            Some(Credential::Plain(expected)) => {
                Check::Done(padded_eq(expected.expose(), presented))
            }
            Some(Credential::Hashed(hash)) => {
                let keyed = self.verified.keyed(presented);
                if let Some(known) = self.verified.lookup(&request.username) {
                    if bool::from(known.ct_eq(&keyed)) {
                        return Check::Done(true);
                    }
                }
                Check::Argon2(Argon2Check {
                    hash: hash.clone(),
                    password: request.password.clone(),
                    remember: Some((request.username.clone(), keyed)),
                    cache: self.verified.clone(),
                })
            }
            None => {
                // An unknown user is still compared against something of the same cost, so
                // that timing does not reveal which user names exist.
                match &self.decoy {
                    Some(hash) => Check::Argon2(Argon2Check {
                        hash: hash.clone(),
                        password: request.password.clone(),
                        remember: None,
                        cache: self.verified.clone(),
                    }),
                    None => {
                        let _ = padded_eq(&[], presented);
                        Check::Done(false)
                    }
                }
            }
        }
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
    fn users_file_with_a_byte_order_mark_or_a_name_twice() {
        let users = Users::parse_file_contents("\u{feff}alice:pw\n").unwrap();
        assert!(
            users.verify(&req("alice", "pw")),
            "the mark is not part of the name"
        );
        let users = Users::parse_file_contents("\u{feff}# note: not a user\nbob:pw\n").unwrap();
        assert_eq!(users.len(), 1, "the commented first line stays a comment");
        let err = Users::parse_file_contents("bob:one\nalice:pw\nbob:two\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().contains("listed twice"), "{err}");
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
        let entry = format!("u:{}", cheap_hash("hunter2"));
        let (_, cred) = Users::parse_entry(&entry).unwrap();
        assert_eq!(format!("{cred:?}"), "Hashed(<redacted>)");
    }

    /// A hash whose parameters would make every login attempt allocate gigabytes (or run
    /// for minutes) is refused when the table is built, not met at the first login (where a
    /// failed allocation aborted the server, for any client: unknown names are checked
    /// against a user's hash).
    #[test]
    fn hashes_that_cost_too_much_per_login_are_refused() {
        let salt_and_hash = "PSIaSt6ArKcxwBqcU1wOrw$BW3EEXhdgzu/eDkcTDfmNEUNnHRvL/9kYptLp3QbyuM";
        for params in [
            "m=4294967295,t=1,p=1",
            "m=262145,t=1,p=1",
            "m=19456,t=200,p=1",
            "m=19456,t=2,p=17",
        ] {
            let entry = format!("u:$argon2id$v=19${params}${salt_and_hash}");
            let err = Users::parse_entry(&entry).unwrap_err();
            assert!(err.to_string().contains("cost too much"), "{params}: {err}");
        }
        for params in ["m=19456,t=2,p=1", "m=262144,t=8,p=4", "m=65536,t=32,p=16"] {
            let entry = format!("u:$argon2id$v=19${params}${salt_and_hash}");
            assert!(Users::parse_entry(&entry).is_ok(), "{params}");
        }
    }

    /// A real Argon2id hash with tiny parameters, so tests stay fast.
    fn cheap_hash(password: &str) -> String {
        hash_with(password, 1)
    }

    /// A 64 KiB Argon2id hash of `passes` passes.
    fn hash_with(password: &str, passes: u32) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(64, passes, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
    }

    fn hashed_users() -> Users {
        let text = format!(
            "alice:{}\nbob:plain-pw\ncarol:{}\n",
            cheap_hash("wonder land"),
            cheap_hash("c-pass")
        );
        Users::parse_file_contents(&text).unwrap()
    }

    #[test]
    fn hashed_user_accepts_only_the_right_password() {
        let users = hashed_users();
        assert!(users.verify(&req("alice", "wonder land")));
        assert!(!users.verify(&req("alice", "wonder lan")));
        assert!(!users.verify(&req("alice", "c-pass")));
        assert!(users.verify(&req("carol", "c-pass")));
        assert!(users.verify(&req("bob", "plain-pw")));
        // The hash string itself is not a password.
        let (_, Credential::Hashed(h)) =
            Users::parse_entry(&format!("x:{}", cheap_hash("p"))).unwrap()
        else {
            panic!("hashed entry expected")
        };
        let mut with_x = users.clone();
        with_x.insert("x", Credential::hashed(h.as_str()).unwrap());
        assert!(!with_x.verify(&req("x", h.as_str())));
    }

    #[test]
    fn second_login_of_a_hashed_user_skips_argon2() {
        let users = hashed_users();
        assert!(users.verify(&req("alice", "wonder land")));
        assert_eq!(users.argon2_checks(), 1);
        for _ in 0..5 {
            assert!(users.verify(&req("alice", "wonder land")));
        }
        assert_eq!(
            users.argon2_checks(),
            1,
            "cached logins must not run Argon2"
        );
        // Clones (the server's Arc'd state) share the cache; a fresh table does not.
        assert!(users.clone().verify(&req("alice", "wonder land")));
        assert_eq!(users.argon2_checks(), 1);
        let reloaded = hashed_users();
        assert!(reloaded.verify(&req("alice", "wonder land")));
        assert_eq!(reloaded.argon2_checks(), 1);
    }

    #[test]
    fn wrong_password_never_enters_or_matches_the_cache() {
        let users = hashed_users();
        // Wrong first: no entry is made, every attempt costs a full Argon2 check.
        for i in 1..=3 {
            assert!(!users.verify(&req("alice", "guess")));
            assert_eq!(users.argon2_checks(), i);
        }
        assert!(users
            .verify_cached_only_for_test("alice", "guess")
            .is_none());
        // After a good login is cached, a wrong password still goes to Argon2 and fails,
        // and does not replace the cached value.
        assert!(users.verify(&req("alice", "wonder land")));
        assert_eq!(users.argon2_checks(), 4);
        assert!(!users.verify(&req("alice", "guess")));
        assert_eq!(users.argon2_checks(), 5);
        assert!(users.verify(&req("alice", "wonder land")));
        assert_eq!(users.argon2_checks(), 5);
        // Another user's cached password does not open this one.
        assert!(!users.verify(&req("carol", "wonder land")));
    }

    #[test]
    fn unknown_user_costs_an_argon2_check_but_is_never_accepted() {
        let users = hashed_users();
        assert!(!users.verify(&req("mallory", "wonder land")));
        assert!(!users.verify(&req("mallory", "c-pass")));
        assert_eq!(users.argon2_checks(), 2);
        assert!(users
            .verify_cached_only_for_test("mallory", "wonder land")
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_async_runs_argon2_off_the_worker_and_caches() {
        let users = hashed_users();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let users = users.clone();
            tasks.push(tokio::spawn(async move {
                users.verify_async(&req("alice", "wonder land")).await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        let before = users.argon2_checks();
        assert!(before >= 1);
        assert!(users.verify_async(&req("alice", "wonder land")).await);
        assert!(!users.verify_async(&req("alice", "nope")).await);
        assert_eq!(users.argon2_checks(), before + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn argon2_checks_at_once_stay_within_the_memory_budget() {
        // A hash of 64 KiB and a budget of 128: two checks at once, though eight cores'
        // worth of check permits would let eight run. Forty passes make each check long
        // enough for the others to pile up behind it.
        let mut users =
            Users::parse_file_contents(&format!("alice:{}\n", hash_with("pw", 40))).unwrap();
        users.verified = Arc::new(VerifiedCache::with_limits(8, 128));
        let mut tasks = Vec::new();
        for n in 0..32 {
            let users = users.clone();
            // Wrong passwords: nothing is remembered, so every login runs Argon2.
            tasks.push(tokio::spawn(async move {
                users
                    .verify_async(&req("alice", &format!("wrong {n}")))
                    .await
            }));
        }
        for t in tasks {
            assert!(!t.await.unwrap());
        }
        assert_eq!(users.argon2_checks(), 32);
        let most = users.verified.most_running.load(Ordering::Relaxed);
        assert!((1..=2).contains(&most), "{most} checks ran at once");
    }

    #[test]
    fn malformed_hash_entries_are_rejected() {
        for bad in [
            "u:$argon2id$",
            "u:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ",
            "u:$argon2x$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        ] {
            let err = Users::parse_entry(bad).unwrap_err();
            assert!(err.message.contains("hash"), "{bad}: {err}");
        }
    }
}
