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
//! Messages are built and parsed by hickory-proto.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
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
type Waiters = Mutex<HashMap<u16, (Name, RecordType, oneshot::Sender<Message>)>>;

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
    /// again of the next server. Answers come back in the order asked.
    pub(crate) async fn lookup_many(&self, queries: &[(String, RecordType)]) -> Vec<Answer> {
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
            let mut waiting = Vec::with_capacity(todo.len());
            for &i in &todo {
                let (name, rtype) = &queries[i];
                let Ok(qname) = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))) else {
                    out[i] = Some(Err(LookupError::Failed(format!("{name}: not a name"))));
                    continue;
                };
                match self.send(server, &qname, *rtype).await {
                    Ok((id, rx)) => waiting.push((i, id, rx)),
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
            let deadline = tokio::time::Instant::now() + per_try;
            let mut next = Vec::new();
            for (i, id, rx) in waiting {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(reply)) => {
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
        out.into_iter()
            .map(|a| a.unwrap_or(Err(LookupError::TimedOut)))
            .collect()
    }

    /// Sends one query; the receiver gets its reply.
    async fn send(
        &self,
        server: &Server,
        qname: &Name,
        rtype: RecordType,
    ) -> Result<(u16, oneshot::Receiver<Message>), LookupError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = lock(&server.waiting);
            let mut id: u16 = rand::random();
            while w.contains_key(&id) {
                id = rand::random();
            }
            w.insert(id, (qname.clone(), rtype, tx));
            id
        };
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(qname.clone(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
        let sent = match m.to_vec() {
            Ok(bytes) => {
                let k = self.next.fetch_add(1, Ordering::Relaxed) % server.sockets.len();
                server.sockets[k]
                    .send(&bytes)
                    .await
                    .map_err(|e| LookupError::Failed(e.to_string()))
            }
            Err(e) => Err(LookupError::Failed(e.to_string())),
        };
        match sent {
            Ok(_) => Ok((id, rx)),
            Err(e) => {
                lock(&server.waiting).remove(&id);
                Err(e)
            }
        }
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

/// Receives replies on one socket and hands each to the query waiting for its ID (and
/// question: a reply to another question with a reused ID is dropped).
async fn receive(sock: Arc<UdpSocket>, waiting: Arc<Waiters>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
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
                let _ = tx.send(reply);
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
