//! Greylisting: the first delivery attempt of an unknown (client network, sender, recipient)
//! triplet is deferred with `451 4.7.1`; a retry after the delay and within the retry window
//! passes, and the triplet is then known for its lifetime. Clients that passed often enough are
//! auto-whitelisted as a whole (postgrey's `--auto-whitelist-clients`), so a mailing list host
//! is greylisted once, not once per recipient.
//!
//! The client is reduced to its network (IPv4 /24, IPv6 /64 by default), because large senders
//! retry from another address of the same pool. Sender addresses are normalized the way
//! postgrey does it: lower-cased, with VERP and SRS-like numbers folded, so each bounce of a
//! mailing list does not start a triplet of its own.
//!
//! State lives in memory, in partitions chosen by the triplet's hash (one per shard, each under
//! its own lock, so two shards meet only when their triplets share a partition), and is written
//! to an embedded redb store in batches by a flusher thread once a second and at drop: a restart
//! forgets at most the last second, which costs a client one more deferral, never a lost
//! message. Expired records are purged on the same thread.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};

/// (first seen, last seen, passes), seconds since the epoch.
const TRIPLETS: TableDefinition<&str, (u64, u64, u32)> = TableDefinition::new("triplets");
/// Client network → (last pass, passes).
const CLIENTS: TableDefinition<&str, (u64, u32)> = TableDefinition::new("clients");

/// Greylisting settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a new triplet is deferred.
    pub delay: Duration,
    /// How long after the first attempt a retry still counts; later, the triplet starts over.
    pub retry_window: Duration,
    /// How long a passed triplet (and an auto-whitelisted client) is remembered after its last
    /// use.
    pub lifetime: Duration,
    /// Passed triplets after which a client network is whitelisted as a whole; 0 turns the
    /// auto-whitelist off.
    pub auto_whitelist: u32,
    /// Prefix length an IPv4 client is reduced to.
    pub ipv4_prefix: u8,
    /// Prefix length an IPv6 client is reduced to.
    pub ipv6_prefix: u8,
    /// Client networks never greylisted.
    pub exempt_networks: Vec<(IpAddr, u8)>,
    /// Sender domains never greylisted (and their subdomains).
    pub exempt_sender_domains: Vec<String>,
    /// Recipients (addresses, or `@domain`) never greylisted.
    pub exempt_recipients: Vec<String>,
    /// Sender domains whose mail is exempt when SPF passes for it.
    pub spf_exempt_domains: Vec<String>,
    /// Partitions (one per shard).
    pub partitions: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(4 * 3600),
            lifetime: Duration::from_secs(35 * 86_400),
            auto_whitelist: 5,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            exempt_networks: Vec::new(),
            exempt_sender_domains: Vec::new(),
            exempt_recipients: Vec::new(),
            spf_exempt_domains: Vec::new(),
            partitions: 1,
        }
    }
}

/// Parses `192.0.2.0/24`, `2001:db8::/32` or a single address.
pub fn parse_network(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (
            a.trim().parse::<IpAddr>().ok()?,
            p.trim().parse::<u8>().ok()?,
        ),
        None => {
            let a = s.trim().parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if a.is_ipv4() { 32 } else { 128 };
    (p <= max).then_some((a, p))
}

/// The first `prefix` bits of an address, the rest zero.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return mask(IpAddr::V4(v4), prefix.saturating_sub(96));
            }
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

fn in_network(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ip.is_ipv4() == net.is_ipv4() && mask(ip, prefix) == mask(net, prefix)
}

/// Lower-cases a sender and folds the parts that change per message: VERP/SRS numbers and
/// `+tags` (postgrey's normalization), so one list's bounces make one triplet.
pub fn normalize_sender(sender: &str) -> String {
    let s = sender.to_ascii_lowercase();
    let Some((local, domain)) = s.rsplit_once('@') else {
        return s;
    };
    let local = local.split('+').next().unwrap_or(local);
    let mut out = String::with_capacity(local.len());
    let mut digits = false;
    for c in local.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    format!("{out}@{domain}")
}

/// Whether `domain` is one of `list` or below one (case-insensitive, no allocation: this runs
/// for every recipient).
fn domain_in(domain: &str, list: &[String]) -> bool {
    let d = domain.as_bytes();
    list.iter().any(|l| {
        let l = l.trim_start_matches('.').as_bytes();
        d.len() >= l.len()
            && d[d.len() - l.len()..].eq_ignore_ascii_case(l)
            && (d.len() == l.len() || d[d.len() - l.len() - 1] == b'.')
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What greylisting decided for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Exempt by configuration.
    Exempt,
    /// The client network is auto-whitelisted.
    Whitelisted,
    /// The triplet is known (this attempt is a retry after the delay, or it passed before).
    Known,
    /// Deferred: try again after this many seconds.
    Defer(u64),
}

/// An error opening or writing the store.
#[derive(Debug, thiserror::Error)]
#[error("greylist store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

#[derive(Default)]
struct Partition {
    triplets: HashMap<String, (u64, u64, u32)>,
    clients: HashMap<String, (u64, u32)>,
    dirty_triplets: HashSet<String>,
    dirty_clients: HashSet<String>,
}

struct Shared {
    settings: std::sync::RwLock<Arc<Settings>>,
    parts: Vec<Mutex<Partition>>,
    db: Database,
    path: PathBuf,
    stop: AtomicBool,
    wake: (Mutex<bool>, Condvar),
}

/// The greylist: shared by all shards.
pub struct Greylist {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Greylist {
    /// Opens (or creates) the store at `path` and loads what it holds.
    pub fn open(path: &Path, settings: Settings) -> Result<Greylist, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = Database::create(path).map_err(|e| err(&e))?;
        let n = settings.partitions.max(1);
        let parts: Vec<Mutex<Partition>> = (0..n).map(|_| Mutex::default()).collect();
        {
            let r = db.begin_read().map_err(|e| err(&e))?;
            if let Ok(t) = r.open_table(TRIPLETS) {
                for e in t.iter().map_err(|e| err(&e))? {
                    let (k, v) = e.map_err(|e| err(&e))?;
                    let key = k.value().to_string();
                    let p = partition_of(&key, n);
                    lock(&parts[p]).triplets.insert(key, v.value());
                }
            }
            if let Ok(t) = r.open_table(CLIENTS) {
                for e in t.iter().map_err(|e| err(&e))? {
                    let (k, v) = e.map_err(|e| err(&e))?;
                    let key = k.value().to_string();
                    let p = partition_of(&key, n);
                    lock(&parts[p]).clients.insert(key, v.value());
                }
            }
        }
        let shared = Arc::new(Shared {
            settings: std::sync::RwLock::new(Arc::new(settings)),
            parts,
            db,
            path: path.to_path_buf(),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
        });
        let s = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("mxgate-greylist".into())
            .spawn(move || loop {
                {
                    let (m, cv) = &s.wake;
                    let g = m.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = cv.wait_timeout(g, Duration::from_secs(1));
                }
                if let Err(e) = s.flush(now_secs()) {
                    log::warn!("{e}");
                }
                if s.stop.load(Ordering::Acquire) {
                    break;
                }
            })
            .map_err(|e| err(&e))?;
        Ok(Greylist {
            shared,
            flusher: Some(flusher),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> Arc<Settings> {
        self.shared.settings()
    }

    /// Replaces the settings (a configuration reload); the partition count stays.
    pub fn update(&self, settings: Settings) {
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Whether a sender's domain is one whose mail is exempt when SPF passes (so the caller
    /// knows to run SPF before asking [`Greylist::check`]).
    pub fn wants_spf(&self, sender: &str) -> bool {
        sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| domain_in(d, &self.settings().spf_exempt_domains))
    }

    /// Decides for one recipient; `spf_pass` says whether SPF passed for the sender.
    pub fn check(&self, client: IpAddr, sender: &str, rcpt: &str, spf_pass: bool) -> Decision {
        self.check_at(client, sender, rcpt, spf_pass, now_secs())
    }

    /// [`Greylist::check`] at a given time (seconds since the epoch).
    pub fn check_at(
        &self,
        client: IpAddr,
        sender: &str,
        rcpt: &str,
        spf_pass: bool,
        now: u64,
    ) -> Decision {
        let s = self.settings();
        let sender_domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        let rcpt_l = rcpt.to_ascii_lowercase();
        let rcpt_domain = rcpt_l.rsplit_once('@').map_or("", |(_, d)| d);
        if s.exempt_networks.iter().any(|&n| in_network(client, n))
            || (!sender_domain.is_empty() && domain_in(sender_domain, &s.exempt_sender_domains))
            || s.exempt_recipients.iter().any(|r| {
                r.eq_ignore_ascii_case(&rcpt_l)
                    || r.strip_prefix('@')
                        .is_some_and(|d| d.eq_ignore_ascii_case(rcpt_domain))
            })
            || (spf_pass && domain_in(sender_domain, &s.spf_exempt_domains))
        {
            return Decision::Exempt;
        }
        let prefix = if client.is_ipv4()
            || matches!(client, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
        {
            s.ipv4_prefix
        } else {
            s.ipv6_prefix
        };
        let net = match mask(client, prefix) {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let net = net.to_string();
        let lifetime = s.lifetime.as_secs();
        if s.auto_whitelist > 0 {
            let p = partition_of(&net, self.shared.parts.len());
            let part = lock(&self.shared.parts[p]);
            if let Some(&(last, n)) = part.clients.get(&net) {
                if n >= s.auto_whitelist && now.saturating_sub(last) <= lifetime {
                    drop(part);
                    self.client_passed(&net, now);
                    return Decision::Whitelisted;
                }
            }
        }
        let key = format!("{net}|{}|{rcpt_l}", normalize_sender(sender));
        let p = partition_of(&key, self.shared.parts.len());
        let mut part = lock(&self.shared.parts[p]);
        let delay = s.delay.as_secs();
        let window = s.retry_window.as_secs();
        let entry = part.triplets.get(&key).copied();
        let (decision, record) = match entry {
            Some((first, last, passes)) if passes > 0 && now.saturating_sub(last) <= lifetime => {
                (Decision::Known, (first, now, passes.saturating_add(1)))
            }
            Some((first, _, 0)) if now.saturating_sub(first) < delay => {
                // Too early: the clock keeps running from the first attempt.
                (
                    Decision::Defer(delay - now.saturating_sub(first)),
                    (first, now, 0),
                )
            }
            Some((first, _, 0)) if now.saturating_sub(first) <= window => {
                (Decision::Known, (first, now, 1))
            }
            _ => (Decision::Defer(delay), (now, now, 0)),
        };
        part.triplets.insert(key.clone(), record);
        part.dirty_triplets.insert(key);
        drop(part);
        if decision == Decision::Known {
            self.client_passed(&net, now);
        }
        decision
    }

    fn client_passed(&self, net: &str, now: u64) {
        if self.settings().auto_whitelist == 0 {
            return;
        }
        let p = partition_of(net, self.shared.parts.len());
        let mut part = lock(&self.shared.parts[p]);
        let e = part.clients.entry(net.to_string()).or_insert((now, 0));
        e.0 = now;
        e.1 = e.1.saturating_add(1);
        part.dirty_clients.insert(net.to_string());
    }

    /// Writes what changed to the store now (it is also written once a second).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush(now_secs())
    }

    /// Triplets held (for tests and stats).
    pub fn len(&self) -> usize {
        self.shared
            .parts
            .iter()
            .map(|p| lock(p).triplets.len())
            .sum()
    }

    /// Whether no triplet is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Greylist {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.1.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes dirty records and drops expired ones, in one transaction.
    fn flush(&self, now: u64) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let s = self.settings();
        let lifetime = s.lifetime.as_secs();
        let window = s.retry_window.as_secs();
        let mut put_t = Vec::new();
        let mut del_t = Vec::new();
        let mut put_c = Vec::new();
        let mut del_c = Vec::new();
        for p in &self.parts {
            let mut part = lock(p);
            let part = &mut *part;
            // Expire: passed triplets after their lifetime, unpassed ones after the window.
            part.triplets.retain(|k, &mut (first, last, passes)| {
                let keep = if passes > 0 {
                    now.saturating_sub(last) <= lifetime
                } else {
                    now.saturating_sub(first) <= window
                };
                if !keep {
                    del_t.push(k.clone());
                }
                keep
            });
            part.clients.retain(|k, &mut (last, _)| {
                let keep = now.saturating_sub(last) <= lifetime;
                if !keep {
                    del_c.push(k.clone());
                }
                keep
            });
            for k in part.dirty_triplets.drain() {
                if let Some(&v) = part.triplets.get(&k) {
                    put_t.push((k, v));
                }
            }
            for k in part.dirty_clients.drain() {
                if let Some(&v) = part.clients.get(&k) {
                    put_c.push((k, v));
                }
            }
        }
        if put_t.is_empty() && del_t.is_empty() && put_c.is_empty() && del_c.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = w.open_table(TRIPLETS).map_err(|e| err(&e))?;
            for (k, v) in &put_t {
                t.insert(k.as_str(), v).map_err(|e| err(&e))?;
            }
            for k in &del_t {
                t.remove(k.as_str()).map_err(|e| err(&e))?;
            }
            let mut c = w.open_table(CLIENTS).map_err(|e| err(&e))?;
            for (k, v) in &put_c {
                c.insert(k.as_str(), v).map_err(|e| err(&e))?;
            }
            for k in &del_c {
                c.remove(k.as_str()).map_err(|e| err(&e))?;
            }
        }
        w.commit().map_err(|e| err(&e))
    }
}

fn partition_of(key: &str, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, s: Settings) -> Greylist {
        Greylist::open(&dir.join("greylist.redb"), s).unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mxgate-greylist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn first_attempt_deferred_retry_after_delay_passes() {
        let d = tmp("retry");
        let g = open(&d, Settings::default());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t0 = 1_000_000;
        assert_eq!(
            g.check_at(ip, "a@s.example", "r@x.example", false, t0),
            Decision::Defer(300)
        );
        assert_eq!(
            g.check_at(ip, "a@s.example", "r@x.example", false, t0 + 60),
            Decision::Defer(240)
        );
        // Another address of the same /24 is the same client.
        let ip2: IpAddr = "198.51.100.200".parse().unwrap();
        assert_eq!(
            g.check_at(ip2, "a@s.example", "r@x.example", false, t0 + 301),
            Decision::Known
        );
        assert_eq!(
            g.check_at(ip, "a@s.example", "r@x.example", false, t0 + 86_400),
            Decision::Known
        );
        // Another recipient is another triplet.
        assert!(matches!(
            g.check_at(ip, "a@s.example", "other@x.example", false, t0 + 301),
            Decision::Defer(_)
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn retry_after_the_window_starts_over() {
        let d = tmp("window");
        let g = open(&d, Settings::default());
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let t0 = 5_000_000;
        assert!(matches!(
            g.check_at(ip, "a@b.c", "r@d.e", false, t0),
            Decision::Defer(_)
        ));
        assert_eq!(
            g.check_at(ip, "a@b.c", "r@d.e", false, t0 + 5 * 3600),
            Decision::Defer(300)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn exemptions() {
        let d = tmp("exempt");
        let s = Settings {
            exempt_networks: vec![parse_network("10.0.0.0/8").unwrap()],
            exempt_sender_domains: vec!["trusted.example".into()],
            exempt_recipients: vec!["postmaster@x.example".into(), "@open.example".into()],
            spf_exempt_domains: vec!["bank.example".into()],
            ..Settings::default()
        };
        let g = open(&d, s);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            g.check("10.9.8.7".parse().unwrap(), "a@b.c", "r@x.example", false),
            Decision::Exempt
        );
        assert_eq!(
            g.check(ip, "a@mail.trusted.example", "r@x.example", false),
            Decision::Exempt
        );
        assert_eq!(
            g.check(ip, "a@b.c", "Postmaster@X.example", false),
            Decision::Exempt
        );
        assert_eq!(
            g.check(ip, "a@b.c", "any@open.example", false),
            Decision::Exempt
        );
        assert!(g.wants_spf("alerts@bank.example"));
        assert_eq!(
            g.check(ip, "alerts@bank.example", "r@x.example", true),
            Decision::Exempt
        );
        assert!(matches!(
            g.check(ip, "alerts@bank.example", "r@x.example", false),
            Decision::Defer(_)
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn clients_that_passed_often_are_whitelisted() {
        let d = tmp("awl");
        let g = open(
            &d,
            Settings {
                auto_whitelist: 2,
                ..Settings::default()
            },
        );
        let ip: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let t0 = 9_000_000;
        for r in ["a@x.example", "b@x.example"] {
            assert!(matches!(
                g.check_at(ip, "l@list.example", r, false, t0),
                Decision::Defer(_)
            ));
            assert_eq!(
                g.check_at(ip, "l@list.example", r, false, t0 + 400),
                Decision::Known
            );
        }
        // Same /64, new recipient: no deferral.
        let ip2: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        assert_eq!(
            g.check_at(ip2, "l@list.example", "c@x.example", false, t0 + 500),
            Decision::Whitelisted
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn state_survives_a_restart() {
        let d = tmp("restart");
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let now = now_secs();
        {
            let g = open(&d, Settings::default());
            assert!(matches!(
                g.check_at(ip, "a@b.c", "r@d.e", false, now - 400),
                Decision::Defer(_)
            ));
        }
        let g = open(&d, Settings::default());
        assert_eq!(g.len(), 1);
        assert_eq!(
            g.check_at(ip, "a@b.c", "r@d.e", false, now),
            Decision::Known
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn senders_normalized() {
        assert_eq!(
            normalize_sender("Bounce-1234-5678@List.Example"),
            "bounce-#-#@list.example"
        );
        assert_eq!(normalize_sender("user+tag42@x.example"), "user@x.example");
        assert_eq!(normalize_sender(""), "");
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_network("192.0.2.0/24"),
            Some(("192.0.2.0".parse().unwrap(), 24))
        );
        assert_eq!(
            parse_network("2001:db8::1"),
            Some(("2001:db8::1".parse().unwrap(), 128))
        );
        assert_eq!(parse_network("192.0.2.0/33"), None);
        assert!(in_network(
            "192.0.2.77".parse().unwrap(),
            parse_network("192.0.2.0/24").unwrap()
        ));
        assert!(!in_network(
            "192.0.3.1".parse().unwrap(),
            parse_network("192.0.2.0/24").unwrap()
        ));
    }
}
