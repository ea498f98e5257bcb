//! The transport of DNS list lookups: a few long-lived UDP sockets per name server, replies
//! matched to queries by ID, and a cache of answers by TTL.
//!
//! hickory's resolver opens, binds, registers and closes a socket for every query (source
//! port randomization against cache poisoning). That is right for a resolver that talks to
//! the Internet, and seven system calls per query; a message's list lookups are a hundred
//! queries at once to one local caching resolver, where those calls are most of the cost (see
//! BENCHMARKS.md, DNS). Here each query is one `send` and its share of a `recv` loop, on
//! sockets bound once to random ports and connected to the server (the kernel drops datagrams
//! from anyone else); IDs are random and matched with the question. SPF, DKIM and DMARC keep
//! hickory's resolver, which follows CNAMEs, retries over TCP and validates more.
//!
//! Queries are encoded here (one question and an EDNS0 record); replies are parsed by
//! hickory-proto.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::LookupError;

/// Sockets per name server.
const SOCKETS: usize = 4;
/// Longest a positive answer is cached.
const MAX_TTL: u32 = 3600;
/// Longest (and default) a negative answer is cached: lists add entries within minutes.
const MAX_NEGATIVE_TTL: u32 = 300;

type Answer = Result<Vec<String>, LookupError>;
/// Queries awaiting replies, by ID: the question, and where the reply goes with the time it
/// was received.
type Waiters = Mutex<HashMap<u16, (Name, RecordType, oneshot::Sender<(Message, Instant)>)>>;

struct Server {
    sockets: Vec<Arc<UdpSocket>>,
    waiting: Arc<Waiters>,
}

/// The list lookup client (lives on the resolver thread's runtime).
pub(crate) struct Client {
    servers: Vec<Server>,
    next: AtomicUsize,
    cache: Mutex<HashMap<(String, RecordType), (Instant, Answer)>>,
    cache_entries: usize,
    attempts: usize,
    timeout: Duration,
}

impl Client {
    /// Binds the sockets and starts their receive loops (inside the runtime).
    pub(crate) async fn new(
        servers: &[SocketAddr],
        cache_entries: u64,
        attempts: usize,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let mut out = Vec::new();
        for &addr in servers {
            let waiting: Arc<Waiters> = Arc::default();
            let mut sockets = Vec::new();
            for _ in 0..SOCKETS {
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = Arc::new(UdpSocket::bind(bind).await?);
                s.connect(addr).await?;
                tokio::spawn(receive(Arc::clone(&s), Arc::clone(&waiting)));
                sockets.push(s);
            }
            out.push(Server { sockets, waiting });
        }
        Ok(Client {
            servers: out,
            next: AtomicUsize::new(0),
            cache: Mutex::default(),
            cache_entries: cache_entries.max(16) as usize,
            attempts: attempts.max(1),
            timeout,
        })
    }

    /// Many lookups at once: every query sent before any answer is awaited, one deadline per
    /// attempt for the whole batch (no task or timer per query), what went unanswered asked
    /// again of the next server. Answers come back in the order asked, with the latency of the
    /// slowest query that was answered (its datagram handed to the kernel → its reply read).
    pub(crate) async fn lookup_many(
        &self,
        queries: &[(String, RecordType)],
    ) -> (Vec<Answer>, Duration) {
        let mut slowest = Duration::ZERO;
        let mut out: Vec<Option<Answer>> = vec![None; queries.len()];
        let mut todo: Vec<usize> = Vec::new();
        {
            let cache = lock(&self.cache);
            let now = Instant::now();
            for (i, (name, rtype)) in queries.iter().enumerate() {
                match cache.get(&(name.to_ascii_lowercase(), *rtype)) {
                    Some((until, a)) if *until > now => out[i] = Some(a.clone()),
                    _ => todo.push(i),
                }
            }
        }
        let tries = self.attempts * self.servers.len().max(1);
        let per_try = self.timeout / tries as u32;
        for t in 0..tries {
            if todo.is_empty() {
                break;
            }
            let server = &self.servers[t % self.servers.len()];
            // Every query built and registered first, then sent in one burst: the last query
            // leaves microseconds after the first, so all answers come back about together.
            let mut waiting = Vec::with_capacity(todo.len());
            let mut datagrams = Vec::with_capacity(todo.len());
            {
                let mut w = lock(&server.waiting);
                for &i in &todo {
                    let (name, rtype) = &queries[i];
                    let name = name.trim_end_matches('.');
                    let (Ok(qname), Some(mut bytes)) = (
                        Name::from_ascii(format!("{name}.")),
                        encode_query(name, *rtype),
                    ) else {
                        out[i] = Some(Err(LookupError::Failed(format!("{name}: not a name"))));
                        continue;
                    };
                    let mut id: u16 = rand::random();
                    while w.contains_key(&id) {
                        id = rand::random();
                    }
                    bytes[..2].copy_from_slice(&id.to_be_bytes());
                    let (tx, rx) = oneshot::channel();
                    w.insert(id, (qname, *rtype, tx));
                    waiting.push((i, id, rx));
                    datagrams.push(bytes);
                }
            }
            let first = self.next.fetch_add(1, Ordering::Relaxed);
            let mut sent_at = vec![Instant::now(); datagrams.len()];
            for (k, sock) in server.sockets.iter().enumerate() {
                // Round robin over the sockets, from where the last batch left off.
                let (which, mine): (Vec<usize>, Vec<&[u8]>) = datagrams
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| (first + j) % server.sockets.len() == k)
                    .map(|(j, d)| (j, d.as_slice()))
                    .unzip();
                let sent = {
                    use std::os::fd::AsRawFd;
                    mxgate_core::udp::send_many(sock.as_raw_fd(), &mine, &[], libc::MSG_DONTWAIT)
                };
                let now = Instant::now();
                for &j in &which[..sent] {
                    sent_at[j] = now;
                }
                for (&j, d) in which[sent..].iter().zip(&mine[sent..]) {
                    // The socket's buffer was full: the rest go one at a time, waiting for room
                    // (a failed send leaves its query to time out and be asked again).
                    let _ = sock.send(d).await;
                    sent_at[j] = Instant::now();
                }
            }
            let deadline = tokio::time::Instant::now() + per_try;
            let mut next = Vec::new();
            for ((i, id, rx), sent) in waiting.into_iter().zip(sent_at) {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok((reply, received))) => {
                        slowest = slowest.max(received.saturating_duration_since(sent));
                        let (answer, ttl) = read(&reply, queries[i].1);
                        if !matches!(answer, Err(LookupError::Failed(_))) {
                            let key = (queries[i].0.to_ascii_lowercase(), queries[i].1);
                            self.remember(key, answer.clone(), ttl);
                        }
                        out[i] = Some(answer);
                    }
                    _ => {
                        lock(&server.waiting).remove(&id);
                        next.push(i);
                    }
                }
            }
            todo = next;
        }
        let answers = out
            .into_iter()
            .map(|a| a.unwrap_or(Err(LookupError::TimedOut)))
            .collect();
        (answers, slowest)
    }

    fn remember(&self, key: (String, RecordType), answer: Answer, ttl: u32) {
        let mut c = lock(&self.cache);
        if c.len() >= self.cache_entries {
            let now = Instant::now();
            c.retain(|_, (until, _)| *until > now);
            if c.len() >= self.cache_entries {
                c.clear(); // all live and full: start over rather than track recency
            }
        }
        c.insert(
            key,
            (Instant::now() + Duration::from_secs(u64::from(ttl)), answer),
        );
    }
}

/// A DNS query for `name` (no trailing dot) with ID 0, recursion desired, and an EDNS0 record
/// offering 1,232-byte answers; `None` when `name` is not a valid domain name.
fn encode_query(name: &str, rtype: RecordType) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(12 + name.len() + 2 + 4 + 11);
    q.extend_from_slice(&[0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 || !label.is_ascii() {
                return None;
            }
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
    }
    q.push(0);
    if q.len() - 12 > 255 {
        return None;
    }
    q.extend_from_slice(&u16::from(rtype).to_be_bytes());
    q.extend_from_slice(&[0, 1]); // class IN
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]); // OPT, 1232 bytes
    Some(q)
}

/// Receives replies on one socket and hands each to the query waiting for its ID (and
/// question: a reply to another question with a reused ID is dropped).
async fn receive(sock: Arc<UdpSocket>, waiting: Arc<Waiters>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, received) = match sock.recv(&mut buf).await {
            Ok(n) => (n, Instant::now()),
            Err(_) => {
                // ICMP unreachable and the like: the waiting query times out and retries.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut w = lock(&waiting);
        let id = reply.metadata.id;
        let same = w.get(&id).is_some_and(|(name, rtype, _)| {
            reply
                .queries
                .first()
                .is_some_and(|q| q.name() == name && q.query_type() == *rtype)
        });
        if same {
            if let Some((_, _, tx)) = w.remove(&id) {
                let _ = tx.send((reply, received));
            }
        }
    }
}

/// The answer in a reply, and how long it may be cached.
fn read(reply: &Message, rtype: RecordType) -> (Answer, u32) {
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rc => return (Err(LookupError::Failed(format!("{rc}"))), 0),
    }
    let mut ttl = MAX_TTL;
    let mut out = Vec::new();
    for r in &reply.answers {
        match (&r.data, rtype) {
            (RData::A(a), RecordType::A) => out.push(a.0.to_string()),
            (RData::TXT(t), RecordType::TXT) => out.push(
                t.txt_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b))
                    .collect(),
            ),
            (RData::NS(ns), RecordType::NS) => {
                out.push(ns.0.to_ascii().trim_end_matches('.').to_string())
            }
            (RData::PTR(p), RecordType::PTR) => {
                out.push(p.0.to_ascii().trim_end_matches('.').to_string())
            }
            (RData::AAAA(a), RecordType::AAAA) => out.push(a.0.to_string()),
            _ => continue,
        }
        ttl = ttl.min(r.ttl);
    }
    if out.is_empty() {
        let neg = reply
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .unwrap_or(MAX_NEGATIVE_TTL);
        return (Err(LookupError::NotFound), neg.min(MAX_NEGATIVE_TTL));
    }
    (Ok(out), ttl)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_what_a_dns_parser_reads() {
        let mut bytes = encode_query("2.0.0.127.zen.example.test", RecordType::TXT).unwrap();
        bytes[..2].copy_from_slice(&0xbeefu16.to_be_bytes());
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(
            m.queries[0].name(),
            &Name::from_ascii("2.0.0.127.zen.example.test.").unwrap()
        );
        assert_eq!(m.queries[0].query_type(), RecordType::TXT);
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
        // Not names: an empty label, a label over 63 bytes, a name over 255.
        assert!(encode_query("a..b", RecordType::A).is_none());
        assert!(encode_query(&"x".repeat(64), RecordType::A).is_none());
        let long = vec!["abcdefghi"; 30].join(".");
        assert!(encode_query(&long, RecordType::A).is_none());
    }
}
