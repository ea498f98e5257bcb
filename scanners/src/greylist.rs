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
//! State lives in memory in partitions, one per shard: a triplet (and a client network) belongs
//! to the partition its hash picks, and only the shard that owns that partition touches it.
//! Another shard asks the owner over a channel and awaits the answer, so no record is behind a
//! lock and two shards never contend. Once a second a writer thread asks every owner for what
//! changed (owners also drop expired records then) and writes it to an embedded redb store in
//! one transaction; an owner reports its last changes when its shard stops. A crash forgets at
//! most the last second or two, which costs a client one more deferral, never a lost message.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

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

/// Whether `ip` is in the network [`parse_network`] gave (an IPv4-mapped IPv6 address as its
/// IPv4 one).
pub fn in_network(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
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
    /// The partition's owner is gone (its shard stopped): the caller defers without a
    /// record.
    Unavailable,
}

/// An error opening or writing the store.
#[derive(Debug, thiserror::Error)]
#[error("greylist store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

/// A partition's records, owned by one shard's task.
#[derive(Default)]
struct Partition {
    triplets: HashMap<String, (u64, u64, u32)>,
    clients: HashMap<String, (u64, u32)>,
    dirty_triplets: HashSet<String>,
    dirty_clients: HashSet<String>,
}

impl Partition {
    /// Whether a client network is auto-whitelisted at `now`; a use counts as a pass.
    fn whitelisted(&mut self, net: &str, now: u64, s: &Settings) -> bool {
        let listed = self.clients.get(net).is_some_and(|&(last, n)| {
            n >= s.auto_whitelist && now.saturating_sub(last) <= s.lifetime.as_secs()
        });
        if listed {
            self.passed(net, now);
        }
        listed
    }

    /// Counts a passed triplet for a client network.
    fn passed(&mut self, net: &str, now: u64) {
        let e = self.clients.entry(net.to_string()).or_insert((now, 0));
        e.0 = now;
        e.1 = e.1.saturating_add(1);
        self.dirty_clients.insert(net.to_string());
    }

    /// Decides for a triplet at `now` and records the attempt.
    fn triplet(&mut self, key: String, now: u64, s: &Settings) -> Decision {
        let delay = s.delay.as_secs();
        let window = s.retry_window.as_secs();
        let lifetime = s.lifetime.as_secs();
        let (decision, record) = match self.triplets.get(&key).copied() {
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
        self.triplets.insert(key.clone(), record);
        self.dirty_triplets.insert(key);
        decision
    }

    /// Drops expired records (passed triplets and clients after their lifetime, unpassed
    /// triplets after the retry window) and takes what the store must learn.
    fn take_changes(&mut self, now: u64, s: &Settings) -> Changes {
        let lifetime = s.lifetime.as_secs();
        let window = s.retry_window.as_secs();
        let mut c = Changes::default();
        self.triplets.retain(|k, &mut (first, last, passes)| {
            let keep = if passes > 0 {
                now.saturating_sub(last) <= lifetime
            } else {
                now.saturating_sub(first) <= window
            };
            if !keep {
                c.del_triplets.push(k.clone());
            }
            keep
        });
        self.clients.retain(|k, &mut (last, _)| {
            let keep = now.saturating_sub(last) <= lifetime;
            if !keep {
                c.del_clients.push(k.clone());
            }
            keep
        });
        for k in self.dirty_triplets.drain() {
            if let Some(&v) = self.triplets.get(&k) {
                c.put_triplets.push((k, v));
            }
        }
        for k in self.dirty_clients.drain() {
            if let Some(&v) = self.clients.get(&k) {
                c.put_clients.push((k, v));
            }
        }
        c
    }
}

/// What a partition changed since it last reported: one store transaction's worth.
#[derive(Default)]
struct Changes {
    put_triplets: Vec<(String, (u64, u64, u32))>,
    del_triplets: Vec<String>,
    put_clients: Vec<(String, (u64, u32))>,
    del_clients: Vec<String>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.put_triplets.is_empty()
            && self.del_triplets.is_empty()
            && self.put_clients.is_empty()
            && self.del_clients.is_empty()
    }
}

/// A request to a partition's owner.
enum Request {
    /// Whether the client network is auto-whitelisted (counting the use as a pass).
    Client {
        net: String,
        now: u64,
        reply: oneshot::Sender<bool>,
    },
    /// Decide for a triplet.
    Triplet {
        key: String,
        now: u64,
        reply: oneshot::Sender<Decision>,
    },
    /// A triplet of this client network passed.
    Passed { net: String, now: u64 },
    /// Report changes to the store writer.
    Flush,
}

type Inbox = mpsc::UnboundedSender<Request>;

/// A partition and what its owner needs: the shard that serves it runs [`Owner::run`].
struct Owner {
    rx: mpsc::UnboundedReceiver<Request>,
    part: Partition,
    settings: Arc<RwLock<Arc<Settings>>>,
    changes: std::sync::mpsc::Sender<Changes>,
    /// Triplets this partition holds, readable by all.
    held: Arc<AtomicUsize>,
}

impl Owner {
    async fn run(mut self) {
        while let Some(req) = self.rx.recv().await {
            let s = read(&self.settings);
            match req {
                Request::Client { net, now, reply } => {
                    let _ = reply.send(self.part.whitelisted(&net, now, &s));
                }
                Request::Triplet { key, now, reply } => {
                    let _ = reply.send(self.part.triplet(key, now, &s));
                }
                Request::Passed { net, now } => self.part.passed(&net, now),
                Request::Flush => self.report(now_secs(), &s),
            }
            self.held.store(self.part.triplets.len(), Ordering::Relaxed);
        }
    }

    fn report(&mut self, now: u64, s: &Settings) {
        let c = self.part.take_changes(now, s);
        if !c.is_empty() {
            let _ = self.changes.send(c);
        }
    }
}

impl Drop for Owner {
    /// The shard is going away: what changed since the last report goes to the store writer.
    fn drop(&mut self) {
        let s = read(&self.settings);
        self.report(now_secs(), &s);
    }
}

/// The greylist. Each partition is owned by one shard, which alone touches its records; other
/// shards ask the owner over a channel.
pub struct Greylist {
    settings: Arc<RwLock<Arc<Settings>>>,
    inboxes: Vec<Inbox>,
    /// Partitions not served yet; [`Greylist::serve`] takes them.
    unserved: Vec<Mutex<Option<Owner>>>,
    /// Triplets held, by partition.
    held: Vec<Arc<AtomicUsize>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Greylist {
    /// Opens (or creates) the store at `path` and loads what it holds. Nothing is decided until
    /// each partition is served: see [`Greylist::serve`].
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
        let mut parts: Vec<Partition> = (0..n).map(|_| Partition::default()).collect();
        {
            let r = db.begin_read().map_err(|e| err(&e))?;
            if let Ok(t) = r.open_table(TRIPLETS) {
                for e in t.iter().map_err(|e| err(&e))? {
                    let (k, v) = e.map_err(|e| err(&e))?;
                    let key = k.value().to_string();
                    parts[partition_of(&key, n)].triplets.insert(key, v.value());
                }
            }
            if let Ok(t) = r.open_table(CLIENTS) {
                for e in t.iter().map_err(|e| err(&e))? {
                    let (k, v) = e.map_err(|e| err(&e))?;
                    let key = k.value().to_string();
                    parts[partition_of(&key, n)].clients.insert(key, v.value());
                }
            }
        }
        let settings = Arc::new(RwLock::new(Arc::new(settings)));
        let (changes, changed) = std::sync::mpsc::channel();
        let mut inboxes = Vec::with_capacity(n);
        let mut unserved = Vec::with_capacity(n);
        let mut held = Vec::with_capacity(n);
        for part in parts {
            let (tx, rx) = mpsc::unbounded_channel();
            inboxes.push(tx);
            held.push(Arc::new(AtomicUsize::new(part.triplets.len())));
            unserved.push(Mutex::new(Some(Owner {
                rx,
                part,
                settings: Arc::clone(&settings),
                changes: changes.clone(),
                held: Arc::clone(&held[held.len() - 1]),
            })));
        }
        drop(changes);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let writer = StoreWriter {
            db,
            path: path.to_path_buf(),
            owners: inboxes.iter().map(|i| i.downgrade()).collect(),
            changed,
            stop: Arc::clone(&stop),
        };
        let writer = std::thread::Builder::new()
            .name("mxgate-greylist".into())
            .spawn(move || writer.run())
            .map_err(|e| err(&e))?;
        Ok(Greylist {
            settings,
            inboxes,
            unserved,
            held,
            stop,
            writer: Some(writer),
        })
    }

    /// Partition `i`'s owner, to run on the shard that serves it (once; `None` afterwards or
    /// when there is no such partition). It ends when the greylist is dropped.
    pub fn serve(
        &self,
        i: usize,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let owner = lock(self.unserved.get(i)?).take()?;
        Some(owner.run())
    }

    /// How many partitions there are (one per shard).
    pub fn partitions(&self) -> usize {
        self.inboxes.len()
    }

    /// The settings in use.
    pub fn settings(&self) -> Arc<Settings> {
        read(&self.settings)
    }

    /// Replaces the settings (a configuration reload); the partition count stays.
    pub fn update(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Whether a sender's domain is one whose mail is exempt when SPF passes (so the caller
    /// knows to run SPF before asking [`Greylist::check`]).
    pub fn wants_spf(&self, sender: &str) -> bool {
        sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| domain_in(d, &self.settings().spf_exempt_domains))
    }

    /// Decides for one recipient; `spf_pass` says whether SPF passed for the sender.
    pub async fn check(
        &self,
        client: IpAddr,
        sender: &str,
        rcpt: &str,
        spf_pass: bool,
    ) -> Decision {
        self.check_at(client, sender, rcpt, spf_pass, now_secs())
            .await
    }

    /// [`Greylist::check`] at a given time (seconds since the epoch).
    pub async fn check_at(
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
        let awl = s.auto_whitelist > 0;
        if awl {
            let (reply, answer) = oneshot::channel();
            let asked = self.owner_of(&net).send(Request::Client {
                net: net.clone(),
                now,
                reply,
            });
            // (A refused request still holds the reply's sender: no waiting for it.)
            if asked.is_err() {
                return Decision::Unavailable;
            }
            match answer.await {
                Ok(true) => return Decision::Whitelisted,
                Ok(false) => {}
                Err(_) => return Decision::Unavailable,
            }
        }
        let key = format!("{net}|{}|{rcpt_l}", normalize_sender(sender));
        let (reply, answer) = oneshot::channel();
        let owner = self.owner_of(&key);
        let decision = match owner.send(Request::Triplet { key, now, reply }) {
            Ok(()) => answer.await.unwrap_or(Decision::Unavailable),
            Err(_) => Decision::Unavailable,
        };
        if awl && decision == Decision::Known {
            let _ = self.owner_of(&net).send(Request::Passed { net, now });
        }
        decision
    }

    fn owner_of(&self, key: &str) -> &Inbox {
        &self.inboxes[partition_of(key, self.inboxes.len())]
    }

    /// Triplets held (for tests and stats).
    pub fn len(&self) -> usize {
        self.held.iter().map(|h| h.load(Ordering::Relaxed)).sum()
    }

    /// Triplets partition `i` holds.
    pub fn held_by(&self, i: usize) -> usize {
        self.held.get(i).map_or(0, |h| h.load(Ordering::Relaxed))
    }

    /// Whether no triplet is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Greylist {
    /// Closes the owners' inboxes (each owner then reports its last changes and ends) and
    /// waits for the writer to store them.
    fn drop(&mut self) {
        self.inboxes.clear();
        self.unserved.clear();
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// The thread that writes the partitions' changes to the store: once a second it asks every
/// owner to report, and writes what they reported in one transaction.
struct StoreWriter {
    db: Database,
    path: PathBuf,
    owners: Vec<mpsc::WeakUnboundedSender<Request>>,
    changed: std::sync::mpsc::Receiver<Changes>,
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl StoreWriter {
    fn run(self) {
        loop {
            let stopping = {
                let (m, cv) = &*self.stop;
                let g = lock(m);
                let (g, _) = cv
                    .wait_timeout_while(g, Duration::from_secs(1), |stop| !*stop)
                    .unwrap_or_else(|p| p.into_inner());
                *g
            };
            let mut batch = Vec::new();
            if stopping {
                // Until every owner has reported for the last time (bounded, should a shard
                // hang).
                while let Ok(c) = self.changed.recv_timeout(Duration::from_secs(5)) {
                    batch.push(c);
                }
            } else {
                batch.extend(self.changed.try_iter());
                for o in &self.owners {
                    if let Some(o) = o.upgrade() {
                        let _ = o.send(Request::Flush);
                    }
                }
            }
            if let Err(e) = self.write(&batch) {
                log::warn!("{e}");
            }
            if stopping {
                return;
            }
        }
    }

    fn write(&self, batch: &[Changes]) -> Result<(), StoreError> {
        if batch.iter().all(Changes::is_empty) {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = w.open_table(TRIPLETS).map_err(|e| err(&e))?;
            let mut c = w.open_table(CLIENTS).map_err(|e| err(&e))?;
            for ch in batch {
                for (k, v) in &ch.put_triplets {
                    t.insert(k.as_str(), v).map_err(|e| err(&e))?;
                }
                for k in &ch.del_triplets {
                    t.remove(k.as_str()).map_err(|e| err(&e))?;
                }
                for (k, v) in &ch.put_clients {
                    c.insert(k.as_str(), v).map_err(|e| err(&e))?;
                }
                for k in &ch.del_clients {
                    c.remove(k.as_str()).map_err(|e| err(&e))?;
                }
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

fn read(s: &RwLock<Arc<Settings>>) -> Arc<Settings> {
    Arc::clone(&s.read().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greylist of three partitions, each served by a thread of its own (as shards would).
    fn open(dir: &Path, s: Settings) -> Greylist {
        let g =
            Greylist::open(&dir.join("greylist.redb"), Settings { partitions: 3, ..s }).unwrap();
        for i in 0..g.partitions() {
            let owner = g.serve(i).unwrap();
            std::thread::spawn(move || block_on(owner));
        }
        assert!(g.serve(0).is_none(), "a partition is served once");
        g
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn check(g: &Greylist, ip: IpAddr, from: &str, rcpt: &str, spf: bool) -> Decision {
        block_on(g.check(ip, from, rcpt, spf))
    }

    fn check_at(g: &Greylist, ip: IpAddr, from: &str, rcpt: &str, spf: bool, t: u64) -> Decision {
        block_on(g.check_at(ip, from, rcpt, spf, t))
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
            check_at(&g, ip, "a@s.example", "r@x.example", false, t0),
            Decision::Defer(300)
        );
        assert_eq!(
            check_at(&g, ip, "a@s.example", "r@x.example", false, t0 + 60),
            Decision::Defer(240)
        );
        // Another address of the same /24 is the same client.
        let ip2: IpAddr = "198.51.100.200".parse().unwrap();
        assert_eq!(
            check_at(&g, ip2, "a@s.example", "r@x.example", false, t0 + 301),
            Decision::Known
        );
        assert_eq!(
            check_at(&g, ip, "a@s.example", "r@x.example", false, t0 + 86_400),
            Decision::Known
        );
        // Another recipient is another triplet.
        assert!(matches!(
            check_at(&g, ip, "a@s.example", "other@x.example", false, t0 + 301),
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
            check_at(&g, ip, "a@b.c", "r@d.e", false, t0),
            Decision::Defer(_)
        ));
        assert_eq!(
            check_at(&g, ip, "a@b.c", "r@d.e", false, t0 + 5 * 3600),
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
            check(
                &g,
                "10.9.8.7".parse().unwrap(),
                "a@b.c",
                "r@x.example",
                false
            ),
            Decision::Exempt
        );
        assert_eq!(
            check(&g, ip, "a@mail.trusted.example", "r@x.example", false),
            Decision::Exempt
        );
        assert_eq!(
            check(&g, ip, "a@b.c", "Postmaster@X.example", false),
            Decision::Exempt
        );
        assert_eq!(
            check(&g, ip, "a@b.c", "any@open.example", false),
            Decision::Exempt
        );
        assert!(g.wants_spf("alerts@bank.example"));
        assert_eq!(
            check(&g, ip, "alerts@bank.example", "r@x.example", true),
            Decision::Exempt
        );
        assert!(matches!(
            check(&g, ip, "alerts@bank.example", "r@x.example", false),
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
                check_at(&g, ip, "l@list.example", r, false, t0),
                Decision::Defer(_)
            ));
            assert_eq!(
                check_at(&g, ip, "l@list.example", r, false, t0 + 400),
                Decision::Known
            );
        }
        // Same /64, new recipient: no deferral.
        let ip2: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        assert_eq!(
            check_at(&g, ip2, "l@list.example", "c@x.example", false, t0 + 500),
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
                check_at(&g, ip, "a@b.c", "r@d.e", false, now - 400),
                Decision::Defer(_)
            ));
        }
        let g = open(&d, Settings::default());
        assert_eq!(g.len(), 1);
        assert_eq!(
            check_at(&g, ip, "a@b.c", "r@d.e", false, now),
            Decision::Known
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_partition_without_its_owner_answers_unavailable() {
        let d = tmp("gone");
        let g = Greylist::open(&d.join("greylist.redb"), Settings::default()).unwrap();
        drop(g.serve(0));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            check(&g, ip, "a@b.c", "r@d.e", false),
            Decision::Unavailable
        );
        drop(g);
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
