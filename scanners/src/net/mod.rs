//! Network checks: DNS blocklists and URI blocklists ([`lists`]), SPF, DKIM, DMARC and ARC
//! ([`auth`]), all through one resolver service.
//!
//! The service is a Tokio runtime on one thread of its own ([`Dns::start`]): list lookups go
//! through a small client of its own (`udp.rs`: pooled sockets, a cache by TTL), SPF, DKIM and
//! DMARC through hickory's resolver. Callers on any thread (glommio shards, a plain threaded
//! program) hand it work and get a [`Pending`] back: a future that any executor can await (its
//! waker is runtime-neutral) or a blocking [`Pending::wait`]. One thread is enough: a DNS query
//! costs microseconds of CPU and milliseconds of waiting, so a thousand in flight share it, and
//! the cache (sized by `cache_entries`) is then one cache for the whole process rather than one
//! per core, which is what a DNS cache wants: the second message from a client, or
//! with a URI seen a minute ago, costs no query on any core. Every query carries its deadline
//! on the service side, so an unresponsive server costs a session its budget and no more.

pub mod auth;
pub mod lists;
mod udp;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::RecordType;
use mail_auth::MessageAuthenticator;

/// Resolver settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name servers to ask (IP:PORT); empty reads `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Time allowed for one query (all attempts together).
    pub timeout: Duration,
    /// Attempts per query and server.
    pub attempts: usize,
    /// Answers kept in the cache.
    pub cache_entries: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            cache_entries: 20_000,
        }
    }
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist or has no record of the type (the usual "not listed").
    #[error("no such record")]
    NotFound,
    /// No answer within the deadline.
    #[error("timed out")]
    TimedOut,
    /// Server failure, refused, malformed answer, network error.
    #[error("{0}")]
    Failed(String),
}

/// An error starting the service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The resolver could not be configured.
    #[error("DNS resolver: {0}")]
    Resolver(String),
    /// The service thread could not start.
    #[error("DNS thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The resolver service: cheap to clone, shared by every thread. The thread ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

struct Inner {
    handle: tokio::runtime::Handle,
    auth: MessageAuthenticator,
    /// List lookups (A and TXT) on pooled sockets.
    lists: Arc<udp::Client>,
    timeout: Duration,
    /// Dropping it ends the service thread's `block_on`.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Dns {
    /// Starts the resolver thread.
    pub fn start(settings: &Settings) -> Result<Dns, StartError> {
        let config = if settings.nameservers.is_empty() {
            let (config, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| StartError::Resolver(format!("/etc/resolv.conf: {e}")))?;
            config
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            ResolverConfig::from_name_servers(servers)
        };
        // The list client asks the same servers.
        let servers: Vec<SocketAddr> = config
            .name_servers()
            .iter()
            .map(|ns| {
                let port = ns.connections.first().map_or(53, |c| c.port);
                SocketAddr::new(ns.ip, port)
            })
            .collect();
        if servers.is_empty() {
            return Err(StartError::Resolver("no name server configured".into()));
        }
        let cache_entries = settings.cache_entries;
        let list_timeout = settings.timeout;
        let mut opts = ResolverOpts::default();
        let attempts = settings.attempts.max(1);
        opts.attempts = attempts;
        opts.timeout = settings.timeout / attempts as u32;
        opts.cache_size = settings.cache_entries;
        // A message's URI checks put a hundred queries in flight at once.
        opts.max_active_requests = 1024;
        opts.ndots = 0;
        opts.edns0 = true;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        // Lists answer within seconds of a listing; a cached "not listed" must not outlive that
        // by much.
        opts.negative_max_ttl = Some(Duration::from_secs(300));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("mxgate-dns".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(StartError::Thread(e)));
                        return;
                    }
                };
                let built = {
                    let _guard = rt.enter();
                    MessageAuthenticator::new(config, opts)
                        .map_err(|e| StartError::Resolver(e.to_string()))
                };
                let auth = match built {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let lists = match rt.block_on(udp::Client::new(
                    &servers,
                    cache_entries,
                    attempts,
                    list_timeout,
                )) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        let _ = started_tx.send(Err(StartError::Thread(e)));
                        return;
                    }
                };
                let _ = started_tx.send(Ok((rt.handle().clone(), auth, lists)));
                let _ = rt.block_on(stop_rx);
            })?;
        let (handle, auth, lists) = started_rx
            .recv()
            .map_err(|_| StartError::Resolver("the DNS thread ended at start".into()))??;
        Ok(Dns {
            inner: Arc::new(Inner {
                handle,
                auth,
                lists,
                timeout: settings.timeout,
                _stop: stop_tx,
            }),
        })
    }

    /// The per-query deadline.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Runs `f` (given the authenticator, which holds the resolver) on the service thread.
    pub fn run<F, T>(&self, f: impl FnOnce(MessageAuthenticator) -> F) -> Pending<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = f(self.inner.auth.clone());
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        Pending { rx }
    }
}

/// What the DNS and auth stages found about one message, for the rules' network tests and the
/// configured lists.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Relay addresses checked against address lists; the first is the one that handed the
    /// message over (the client, or the newest `Received:` hop for a scanned file).
    pub relays: Vec<IpAddr>,
    /// A answers by query name (names with no answer are absent).
    pub a: HashMap<String, Vec<Ipv4Addr>>,
    /// TXT answers by query name.
    pub txt: HashMap<String, Vec<String>>,
    /// The message's URIs as the rules read them (`rules::view::uris`), when the URI lists
    /// needed them; the rule engine then uses these rather than finding them again.
    pub uris: Option<Vec<Vec<u8>>>,
    /// The registrable domains of the message's URIs that were looked up.
    pub uri_domains: Vec<String>,
    /// Addresses behind URI domains: (domain, address, from its own A records rather than
    /// its name servers').
    pub uri_ips: Vec<UriAddress>,
    /// `askdns` queries made: (template, query name, the signing domain for `_DKIMDOMAIN_`).
    pub askdns: Vec<(String, String, Option<String>)>,
    /// SPF, DKIM, DMARC and ARC, when the auth stage ran.
    pub auth: Option<auth::Results>,
    /// Queries that got no answer in time.
    pub timed_out: usize,
    /// The latency of the slowest list query answered (the longest of the message's batches).
    pub slowest_query: Duration,
    /// Queries that failed otherwise.
    pub failed: usize,
    /// The client's host name, forward-confirmed (its PTR name resolves back to it), when it
    /// was looked up: `Some("")` for none (Postfix's "unknown").
    pub client_name: Option<String>,
}

/// One query of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// The name.
    pub name: String,
    /// TXT rather than A.
    pub txt: bool,
}

impl Dns {
    /// Runs a batch of queries at once (one hand-over to the service thread for all of
    /// them) and files the answers into `facts`' shape: what comes back is merged by
    /// [`Facts::absorb`].
    pub fn lookup_all(&self, queries: Vec<Query>) -> Pending<Answers> {
        let lists = Arc::clone(&self.inner.lists);
        self.run(move |_| async move {
            let asked: Vec<(String, RecordType)> = queries
                .iter()
                .map(|q| {
                    let t = if q.txt {
                        RecordType::TXT
                    } else {
                        RecordType::A
                    };
                    (q.name.clone(), t)
                })
                .collect();
            let (answers, slowest) = lists.lookup_many(&asked).await;
            Answers {
                answers: queries.into_iter().zip(answers).collect(),
                slowest,
            }
        })
    }

    /// The addresses behind URI domains and their answers on address lists: each domain's
    /// name servers' addresses (NS, then A) and its own A records, as `zones` asks ((zone, own A
    /// records?)), each address then asked of its zones. Three rounds of lookups, each a batch.
    /// Non-public addresses are skipped when `exclude_private`.
    pub fn uri_ip_lookups(
        &self,
        domains: Vec<String>,
        zones: Vec<(String, bool)>,
        exclude_private: bool,
    ) -> Pending<(Vec<UriAddress>, Answers)> {
        let lists = Arc::clone(&self.inner.lists);
        self.run(move |_| async move {
            let mut ips: Vec<(String, IpAddr, bool)> = Vec::new();
            let keep = |d: &str, a: &str, via_a: bool, ips: &mut Vec<(String, IpAddr, bool)>| {
                if let Ok(ip) = a.parse::<Ipv4Addr>() {
                    let ip = IpAddr::V4(ip);
                    if (!exclude_private || is_public(ip))
                        && !ips.iter().any(|x| x.0 == d && x.1 == ip && x.2 == via_a)
                    {
                        ips.push((d.to_string(), ip, via_a));
                    }
                }
            };
            // The three rounds run one after the other: their slowest queries add up.
            let mut slowest = Duration::ZERO;
            if zones.iter().any(|(_, a)| *a) {
                let asked: Vec<(String, RecordType)> =
                    domains.iter().map(|d| (d.clone(), RecordType::A)).collect();
                let (answers, t) = lists.lookup_many(&asked).await;
                slowest += t;
                for (d, r) in domains.iter().zip(answers) {
                    for a in r.unwrap_or_default() {
                        keep(d, &a, true, &mut ips);
                    }
                }
            }
            if zones.iter().any(|(_, a)| !*a) {
                let asked: Vec<(String, RecordType)> = domains
                    .iter()
                    .map(|d| (d.clone(), RecordType::NS))
                    .collect();
                // At most three name servers a domain, as a spammer could list hundreds.
                let mut hosts: Vec<(String, String)> = Vec::new();
                let (answers, t) = lists.lookup_many(&asked).await;
                slowest += t;
                for (d, r) in domains.iter().zip(answers) {
                    for h in r.unwrap_or_default().into_iter().take(3) {
                        hosts.push((d.clone(), h));
                    }
                }
                let asked: Vec<(String, RecordType)> = hosts
                    .iter()
                    .map(|(_, h)| (h.clone(), RecordType::A))
                    .collect();
                let (answers, t) = lists.lookup_many(&asked).await;
                slowest += t;
                for ((d, _), r) in hosts.iter().zip(answers) {
                    for a in r.unwrap_or_default() {
                        keep(d, &a, false, &mut ips);
                    }
                }
            }
            let mut queries: Vec<Query> = Vec::new();
            for (_, ip, via_a) in &ips {
                for (zone, a) in &zones {
                    let q = Query {
                        name: lists::ip_query(*ip, zone),
                        txt: false,
                    };
                    if a == via_a && !queries.contains(&q) {
                        queries.push(q);
                    }
                }
            }
            let asked: Vec<(String, RecordType)> = queries
                .iter()
                .map(|q| (q.name.clone(), RecordType::A))
                .collect();
            let (answers, t) = lists.lookup_many(&asked).await;
            slowest += t;
            (
                ips,
                Answers {
                    answers: queries.into_iter().zip(answers).collect(),
                    slowest,
                },
            )
        })
    }
}

impl Dns {
    /// The client's host name as an MTA records it: the first PTR name whose A (or AAAA)
    /// records include the address; `""` when there is none, or the lookups failed (Postfix's
    /// "unknown"). `None` only when the service stopped.
    pub fn client_name(&self, ip: IpAddr) -> Pending<String> {
        let lists = Arc::clone(&self.inner.lists);
        self.run(move |_| async move {
            let zone =
                if ip.is_ipv4() || matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
                    "in-addr.arpa"
                } else {
                    "ip6.arpa"
                };
            let (ptr, _) = lists
                .lookup_many(&[(lists::ip_query(ip, zone), RecordType::PTR)])
                .await;
            // At most three names, as a spammer could publish hundreds.
            let names: Vec<String> = ptr
                .into_iter()
                .next()
                .and_then(Result::ok)
                .unwrap_or_default()
                .into_iter()
                .take(3)
                .collect();
            let rtype = if zone == "ip6.arpa" {
                RecordType::AAAA
            } else {
                RecordType::A
            };
            let asked: Vec<(String, RecordType)> =
                names.iter().map(|n| (n.clone(), rtype)).collect();
            let (addrs, _) = lists.lookup_many(&asked).await;
            let want = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            names
                .into_iter()
                .zip(addrs)
                .find(|(_, a)| {
                    a.as_ref().is_ok_and(|a| {
                        a.iter()
                            .any(|x| x.parse::<IpAddr>().is_ok_and(|x| x == want))
                    })
                })
                .map(|(n, _)| n)
                .unwrap_or_default()
        })
    }
}

/// An address behind a URI domain: (domain, address, from the domain's own A records rather
/// than its name servers').
pub type UriAddress = (String, IpAddr, bool);

/// A batch's answers.
#[derive(Debug, Default)]
pub struct Answers {
    /// Each query with its answer.
    pub answers: Vec<(Query, Result<Vec<String>, LookupError>)>,
    /// The latency of the batch's slowest answered query (for rounds asked one after the
    /// other, the sum of each round's slowest).
    pub slowest: Duration,
}

impl Facts {
    /// Files a batch's answers.
    pub fn absorb(&mut self, answers: Answers) {
        self.slowest_query = self.slowest_query.max(answers.slowest);
        for (q, r) in answers.answers {
            match r {
                Ok(v) if q.txt => {
                    self.txt.insert(q.name, v);
                }
                Ok(v) => {
                    let a: Vec<Ipv4Addr> = v.iter().filter_map(|s| s.parse().ok()).collect();
                    if !a.is_empty() {
                        self.a.insert(q.name, a);
                    }
                }
                Err(LookupError::NotFound) => {}
                Err(LookupError::TimedOut) => self.timed_out += 1,
                Err(LookupError::Failed(_)) => self.failed += 1,
            }
        }
    }
}

/// An answer on its way from the service thread. Awaiting it gives `None` only when the
/// service stopped before answering.
pub struct Pending<T> {
    rx: tokio::sync::oneshot::Receiver<T>,
}

impl<T> Pending<T> {
    /// Blocks the calling thread until the answer arrives (not for use inside an executor).
    pub fn wait(self) -> Option<T> {
        self.rx.blocking_recv().ok()
    }
}

impl<T> Future for Pending<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

/// Whether an address is worth a DNS list lookup: public unicast, not loopback, private,
/// link-local, documentation or shared address space (RFC 6890 special-purpose ranges answer
/// nothing useful and leak internal addresses to list operators).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 2)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for a in ["8.8.8.8", "81.2.69.160", "2a00:1450::1"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "192.0.2.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
    }
}
