//! Name resolution, outgoing connects, and the one classification of connect errors.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrosocks_proto::Addr;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use crate::error::{ConnectFailure, Phase, SessionError};
use crate::tcp_tuning::{self, Local};

/// How long one connect attempt runs alone before the next address is tried beside it
/// (RFC 8305's recommended "connection attempt delay").
const ATTEMPT_STAGGER: Duration = Duration::from_millis(250);

/// Names resolved lately, reused for a while so that a client that opens many
/// connections to one name (a browser, a crawler, `curl --socks5-hostname` in a loop) does
/// not pay a system lookup for each. The system resolver (`getaddrinfo`) blocks, so each
/// lookup runs on tokio's blocking pool: two thread switches per session on top of the
/// lookup's own work. Reusing answers made sessions to one name 1.24 times as fast on the
/// 2-core benchmark machine (README, Performance, "Target names"). Only answers are kept,
/// never failures, and without the record's TTL (the system resolver does not give it),
/// so `ttl` is the staleness a changed record can see, as in curl's own cache (60 s) or
/// Java's (30 s). Lookups under way for the same name are not merged: each that misses
/// asks the system.
pub(crate) struct NameCache {
    ttl: Duration,
    entries: Mutex<HashMap<Box<str>, Resolved>>,
}

/// One name's answer: its addresses, in the order connects try them, and when it came.
struct Resolved {
    ips: Arc<[IpAddr]>,
    at: Instant,
}

/// Most names kept at once. Past it, expired answers are dropped, and if that frees
/// nothing every answer is: a client using this many names within one `ttl` gets few hits
/// anyway, and the bound keeps a flood of distinct names from growing memory.
const NAME_CACHE_CAPACITY: usize = 4096;

impl NameCache {
    /// A cache whose answers live `ttl`; zero keeps nothing.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is reused.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn get(&self, host: &str, now: Instant) -> Option<(Arc<[IpAddr]>, Instant)> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = key(host);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let hit = entries.get(key.as_ref())?;
        (now.saturating_duration_since(hit.at) < self.ttl).then(|| (hit.ips.clone(), hit.at))
    }

    fn put(&self, host: &str, ips: Arc<[IpAddr]>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let key = key(host);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= NAME_CACHE_CAPACITY && !entries.contains_key(key.as_ref()) {
            entries.retain(|_, r| now.saturating_duration_since(r.at) < self.ttl);
            // Unless an eighth is free now, start afresh: a scan of the whole map then
            // comes at most once per eighth of the capacity in new names, not per name.
            if entries.len() > NAME_CACHE_CAPACITY - NAME_CACHE_CAPACITY / 8 {
                entries.clear();
            }
        }
        entries.insert(key.into_owned().into(), Resolved { ips, at: now });
    }

    /// Drops `host`'s answer: none of its addresses could be connected to, and a fresh
    /// lookup may know better (a record moved to a server that is up).
    pub(crate) fn forget(&self, host: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key(host).as_ref());
    }
}

/// DNS names are case-insensitive, so names that differ only in ASCII case share an entry;
/// most arrive in lower case already and cost no copy.
fn key(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Turns a SOCKS address into socket addresses: an IP as it is, a name through `names` or
/// else the system resolver. An empty answer is an error.
pub(crate) async fn resolve(
    addr: &Addr,
    names: &NameCache,
) -> Result<Vec<SocketAddr>, SessionError> {
    resolve_dated(addr, names).await.map(|(addrs, _)| addrs)
}

/// [`resolve`], also saying when the answer was looked up (now for an address), so that a
/// cache kept elsewhere (a UDP association's) does not keep it past the same `ttl`.
pub(crate) async fn resolve_dated(
    addr: &Addr,
    names: &NameCache,
) -> Result<(Vec<SocketAddr>, Instant), SessionError> {
    resolve_with(addr, names, |host, port| async move {
        Ok(tokio::net::lookup_host((host.as_str(), port))
            .await?
            .collect())
    })
    .await
}

/// [`resolve_dated`] with the lookup given, so tests can count what reaches it.
async fn resolve_with<F, Fut>(
    addr: &Addr,
    names: &NameCache,
    lookup: F,
) -> Result<(Vec<SocketAddr>, Instant), SessionError>
where
    F: FnOnce(String, u16) -> Fut,
    Fut: std::future::Future<Output = io::Result<Vec<SocketAddr>>>,
{
    let (host, port) = match addr {
        Addr::Ip(sa) => return Ok((vec![*sa], Instant::now())),
        Addr::Domain(host, port) => (host.as_str(), *port),
    };
    // An address sent as a name (ATYP 03 with "192.0.2.1") needs no lookup, and must not
    // take cache slots from real names.
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![SocketAddr::new(ip, port)], Instant::now()));
    }
    let with_port = |ips: &[IpAddr]| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    if let Some((ips, at)) = names.get(host, Instant::now()) {
        return Ok((with_port(&ips), at));
    }
    let failed = |reason: String| SessionError::ResolveFailed {
        host: host.to_string(),
        reason,
    };
    let addrs = lookup(host.to_owned(), port)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if addrs.is_empty() {
        return Err(failed("no addresses".into()));
    }
    let ips: Arc<[IpAddr]> = interleave_families(addrs).iter().map(|a| a.ip()).collect();
    let now = Instant::now();
    names.put(host, ips.clone(), now);
    Ok((with_port(&ips), now))
}

/// Orders addresses IPv6, IPv4, IPv6, IPv4, ... (keeping each family's order), so that a
/// broken family costs one stagger delay rather than every one of its addresses.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// The one place an `io::Error` from connect becomes a [`ConnectFailure`].
pub fn classify(error: &io::Error) -> ConnectFailure {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::ConnectionRefused,
        io::ErrorKind::NetworkUnreachable => ConnectFailure::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => ConnectFailure::HostUnreachable,
        io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
        _ => ConnectFailure::Other,
    }
}

/// Connects to the first address that answers, trying them in order and starting the next
/// attempt when one fails or has run for [`ATTEMPT_STAGGER`] (happy eyeballs), all within
/// `timeout`, each socket with the tunnel options (`local` for loopback targets) set
/// before it connects. On failure, the error of the last attempt to fail is reported.
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
    local: Local<'_>,
) -> Result<(TcpStream, SocketAddr), SessionError> {
    if let [only] = addrs {
        // The common case (an IP target) needs no racing, and no task per attempt.
        return match tokio::time::timeout(timeout, tcp_tuning::connect(*only, local)).await {
            Err(_) => Err(SessionError::Timeout(Phase::Connect)),
            Ok(Ok(stream)) => Ok((stream, *only)),
            Ok(Err(source)) => Err(SessionError::ConnectFailed {
                kind: classify(&source),
                target: only.to_string(),
                source,
            }),
        };
    }
    let deadline = Instant::now() + timeout;
    let mut attempts = JoinSet::new();
    let mut next = addrs.iter().copied();
    let mut last_error: Option<(SocketAddr, io::Error)> = None;
    let mut start_next = true;
    // Each attempt is a task of its own, which cannot borrow the configuration.
    let congestion: Option<std::sync::Arc<str>> = local.congestion.map(Into::into);
    let notsent_lowat = local.notsent_lowat;
    loop {
        if start_next {
            if let Some(addr) = next.next() {
                let congestion = congestion.clone();
                attempts.spawn(async move {
                    let local = Local {
                        congestion: congestion.as_deref(),
                        notsent_lowat,
                    };
                    (addr, tcp_tuning::connect(addr, local).await)
                });
            }
        }
        if attempts.is_empty() {
            break;
        }
        let more_waiting = next.len() > 0;
        tokio::select! {
            joined = attempts.join_next() => {
                match joined {
                    Some(Ok((addr, Ok(stream)))) => return Ok((stream, addr)),
                    Some(Ok((addr, Err(e)))) => last_error = Some((addr, e)),
                    // A panicked or cancelled attempt counts as a failure of unknown cause.
                    Some(Err(e)) => last_error = Some((addrs[0], io::Error::other(e))),
                    None => break,
                }
                start_next = true;
            }
            _ = sleep(ATTEMPT_STAGGER), if more_waiting => start_next = true,
            _ = tokio::time::sleep_until(deadline) => return Err(SessionError::Timeout(Phase::Connect)),
        }
    }
    let (addr, source) = last_error.unwrap_or_else(|| {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to"),
        )
    });
    Err(SessionError::ConnectFailed {
        kind: classify(&source),
        target: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_are_classified_by_errno() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(111)), ConnectFailure::ConnectionRefused); // ECONNREFUSED
        assert_eq!(classify(&os(101)), ConnectFailure::NetworkUnreachable); // ENETUNREACH
        assert_eq!(classify(&os(113)), ConnectFailure::HostUnreachable); // EHOSTUNREACH
        assert_eq!(classify(&os(110)), ConnectFailure::TimedOut); // ETIMEDOUT
        assert_eq!(classify(&os(13)), ConnectFailure::Other); // EACCES
    }

    #[test]
    fn families_are_interleaved() {
        let a: Vec<SocketAddr> = ["1.1.1.1:1", "2.2.2.2:1", "[::1]:1", "[::2]:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out = interleave_families(a);
        let s: Vec<String> = out.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["[::1]:1", "1.1.1.1:1", "[::2]:1", "2.2.2.2:1"]);
    }

    /// A lookup that answers `ips` and counts its calls.
    fn counting(
        calls: &Arc<std::sync::atomic::AtomicUsize>,
        ips: &[&str],
    ) -> impl FnOnce(String, u16) -> std::future::Ready<io::Result<Vec<SocketAddr>>> {
        let calls = calls.clone();
        let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
        move |_host, port| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()))
        }
    }

    fn name(host: &str, port: u16) -> Addr {
        Addr::Domain(ferrosocks_proto::Host::new(host).unwrap(), port)
    }

    fn strings(addrs: &[SocketAddr]) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    /// The addresses of a [`resolve_with`] answer, as strings.
    async fn looked_up<F, Fut>(addr: &Addr, cache: &NameCache, lookup: F) -> Vec<String>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: std::future::Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let (addrs, _) = resolve_with(addr, cache, lookup).await.unwrap();
        strings(&addrs)
    }

    fn count(calls: &std::sync::atomic::AtomicUsize) -> usize {
        calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_is_looked_up_once_per_ttl_whatever_the_port_or_case() {
        let cache = NameCache::new(Duration::from_secs(30));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ips = ["192.0.2.1", "2001:db8::1"];
        let first = looked_up(&name("example.test", 80), &cache, counting(&calls, &ips)).await;
        // Families interleaved, IPv6 first, as connects try them.
        assert_eq!(first, ["[2001:db8::1]:80", "192.0.2.1:80"]);
        tokio::time::advance(Duration::from_secs(29)).await;
        let again = looked_up(&name("Example.TEST", 443), &cache, counting(&calls, &[])).await;
        assert_eq!(again, ["[2001:db8::1]:443", "192.0.2.1:443"]);
        assert_eq!(count(&calls), 1);
        // Past the TTL the name is asked again, and the new answer replaces the old.
        tokio::time::advance(Duration::from_secs(2)).await;
        let later = looked_up(
            &name("example.test", 80),
            &cache,
            counting(&calls, &["192.0.2.9"]),
        )
        .await;
        assert_eq!(later, ["192.0.2.9:80"]);
        assert_eq!(count(&calls), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_answer_carries_the_time_it_was_looked_up() {
        // A UDP association keeps what it gets for `ttl` from this time, so an answer
        // fetched 29 s ago is good for 1 s more there, not 30.
        let cache = NameCache::new(Duration::from_secs(30));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let looked = Instant::now();
        let dst = name("example.test", 53);
        resolve_with(&dst, &cache, counting(&calls, &["192.0.2.1"]))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(29)).await;
        let (_, at) = resolve_with(&dst, &cache, counting(&calls, &[]))
            .await
            .unwrap();
        assert_eq!(at, looked);
        assert_eq!(count(&calls), 1);
    }

    #[tokio::test]
    async fn failures_and_empty_answers_are_not_kept() {
        let cache = NameCache::new(Duration::from_secs(30));
        let failing = |_host: String, _port: u16| {
            std::future::ready(Err::<Vec<SocketAddr>, _>(io::Error::other("no such name")))
        };
        let err = resolve_with(&name("gone.test", 80), &cache, failing)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::ResolveFailed { .. }), "{err}");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let err = resolve_with(&name("gone.test", 80), &cache, counting(&calls, &[]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no addresses"), "{err}");
        let ok = looked_up(
            &name("gone.test", 80),
            &cache,
            counting(&calls, &["192.0.2.1"]),
        )
        .await;
        assert_eq!(ok, ["192.0.2.1:80"]);
        assert_eq!(count(&calls), 2);
    }

    #[tokio::test]
    async fn a_forgotten_name_is_looked_up_again() {
        let cache = NameCache::new(Duration::from_secs(30));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dst = name("moved.test", 80);
        looked_up(&dst, &cache, counting(&calls, &["192.0.2.1"])).await;
        cache.forget("MOVED.test");
        let fresh = looked_up(&dst, &cache, counting(&calls, &["192.0.2.2"])).await;
        assert_eq!(fresh, ["192.0.2.2:80"]);
        assert_eq!(count(&calls), 2);
    }

    #[tokio::test]
    async fn a_zero_ttl_looks_up_every_time_and_addresses_skip_the_lookup() {
        let cache = NameCache::new(Duration::ZERO);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            looked_up(
                &name("example.test", 80),
                &cache,
                counting(&calls, &["192.0.2.1"]),
            )
            .await;
        }
        assert_eq!(count(&calls), 3);
        let ip = Addr::Ip("198.51.100.7:25".parse().unwrap());
        let out = looked_up(&ip, &cache, counting(&calls, &[])).await;
        assert_eq!(out, ["198.51.100.7:25"]);
        assert_eq!(count(&calls), 3);
    }

    #[tokio::test]
    async fn an_address_sent_as_a_name_is_neither_looked_up_nor_kept() {
        let cache = NameCache::new(Duration::from_secs(30));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let v4 = looked_up(&name("192.0.2.7", 80), &cache, counting(&calls, &[])).await;
        assert_eq!(v4, ["192.0.2.7:80"]);
        let v6 = looked_up(&name("2001:db8::7", 80), &cache, counting(&calls, &[])).await;
        assert_eq!(v6, ["[2001:db8::7]:80"]);
        assert_eq!(count(&calls), 0);
        assert!(cache.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = NameCache::new(Duration::from_secs(30));
        let start = Instant::now();
        let ips: Arc<[IpAddr]> = Arc::from(vec![IpAddr::from([192, 0, 2, 1])]);
        let len = || cache.entries.lock().unwrap().len();
        for i in 0..NAME_CACHE_CAPACITY {
            cache.put(&format!("n{i}.test"), ips.clone(), start);
        }
        // Full of live answers: a new name makes room by dropping them all.
        let t1 = start + Duration::from_secs(1);
        cache.put("new.test", ips.clone(), t1);
        assert_eq!(len(), 1);
        assert!(cache.get("new.test", t1).is_some());
        assert!(cache.get("n0.test", t1).is_none());
        // Full again, mostly of answers that expire first: those go, the live ones stay.
        let old = NAME_CACHE_CAPACITY - NAME_CACHE_CAPACITY / 4;
        for i in 1..old {
            cache.put(&format!("old{i}.test"), ips.clone(), t1);
        }
        let t2 = t1 + Duration::from_secs(20);
        for i in old..NAME_CACHE_CAPACITY {
            cache.put(&format!("live{i}.test"), ips.clone(), t2);
        }
        assert_eq!(len(), NAME_CACHE_CAPACITY);
        let t3 = t1 + Duration::from_secs(40);
        cache.put("last.test", ips, t3);
        assert_eq!(len(), NAME_CACHE_CAPACITY / 4 + 1);
        assert!(cache.get("old1.test", t3).is_none());
        assert!(cache.get(&format!("live{old}.test"), t3).is_some());
        assert!(cache.get("last.test", t3).is_some());
    }

    #[tokio::test]
    async fn refused_everywhere_reports_refused() {
        // Bind then drop listeners to find ports nobody listens on.
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap());
        }
        let err = connect_any(&addrs, Duration::from_secs(5), Local::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::ConnectFailed {
                    kind: ConnectFailure::ConnectionRefused,
                    ..
                }
            ),
            "{err}"
        );
    }
}
