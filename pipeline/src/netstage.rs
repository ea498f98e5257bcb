//! The `dns` and `auth` stages: what a message's checks ask of the network, started as soon
//! as their input is known and gathered beside the content scan.
//!
//! The client's address is known at connect, so its list lookups start then
//! ([`NetStage::client_lookups`]); the message's URIs, its `Received:` relays and its signatures
//! are known at the end of data, when [`NetStage::gather`] starts the rest: the URI lookups, the
//! relay lookups and SPF/DKIM/DMARC/ARC, all at once on the resolver thread, while the AV and OCR
//! pools work on the same message. The session awaits both; no lookup ever runs on a shard.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use mxgate_core::config::Config;
use mxgate_core::mime::Message;
use mxgate_core::smtp::Envelope;
use mxgate_scanners::net::lists::{self, List, Subtest, Target};
use mxgate_scanners::net::{self, auth, Answers, Dns, Facts, Pending, Query};
use mxgate_scanners::rules::{self, DnsPlan};

/// The network stages of one configuration.
pub struct NetStage {
    dns: Dns,
    /// The gateway's own lists.
    lists: Vec<List>,
    /// What the ruleset's network rules ask for (empty without the rules or headers stage).
    plan: DnsPlan,
    /// The `dns` stage is on.
    lookups: bool,
    /// The `auth` stage is on.
    auth: bool,
    exclude_private: bool,
    max_uri_domains: usize,
    hostname: String,
    /// Add `Authentication-Results:`.
    pub add_header: bool,
    /// Refuse DMARC failures under `p=reject`.
    pub reject_dmarc: bool,
}

/// Lookups started at connect for a client.
pub struct Early {
    client: IpAddr,
    answers: Option<Pending<Answers>>,
    /// The client's forward-confirmed host name, asked at its first MAIL (a connection that
    /// never sends mail costs no lookup).
    name: Option<Pending<String>>,
}

/// SpamAssassin's default scores for the auth symbols, used when no ruleset scores them (the
/// rules and headers stages off).
const AUTH_SCORES: &[(&str, f64)] = &[
    ("SPF_FAIL", 0.919),
    ("SPF_SOFTFAIL", 0.665),
    ("SPF_HELO_FAIL", 0.001),
    ("SPF_HELO_SOFTFAIL", 0.732),
    ("SPF_PASS", -0.001),
    ("SPF_HELO_PASS", -0.001),
    ("DKIM_VALID", -0.1),
    ("DKIM_VALID_AU", -0.1),
    ("DKIM_VALID_EF", -0.1),
    ("DKIM_SIGNED", 0.1),
    ("DKIM_INVALID", 0.1),
    ("DMARC_REJECT", 1.8),
    ("DMARC_QUAR", 1.2),
    ("DMARC_NONE", 0.9),
    ("DMARC_PASS", -0.1),
];

impl NetStage {
    /// Starts the resolver. `plan` is the ruleset's, when a rule engine runs.
    pub fn new(cfg: &Config, plan: Option<&DnsPlan>, hostname: &str) -> anyhow::Result<NetStage> {
        let d = &cfg.dns;
        let settings = net::Settings {
            nameservers: d
                .nameservers
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            timeout: Duration::from_millis(d.timeout_ms),
            attempts: d.attempts,
            cache_entries: d.cache_entries,
        };
        let dns = Dns::start(&settings)?;
        let lookups = cfg.stage("dns");
        let lists = d
            .lists
            .iter()
            .map(|l| List {
                symbol: l.symbol.clone(),
                zone: l.zone.trim_end_matches('.').to_string(),
                target: if l.on == "uri" {
                    Target::Uri
                } else {
                    Target::Client
                },
                subtest: Subtest::parse(&l.subtest).unwrap_or(Subtest::Any),
                score: l.score,
            })
            .collect();
        let plan = match plan {
            Some(p) if lookups && d.ruleset => p.clone(),
            Some(p) => DnsPlan {
                skip: p.skip.clone(),
                redirectors: p.redirectors.clone(),
                ..DnsPlan::default()
            },
            None => DnsPlan::default(),
        };
        Ok(NetStage {
            dns,
            lists,
            plan,
            lookups,
            auth: cfg.stage("auth"),
            exclude_private: d.exclude_private_ips,
            max_uri_domains: d.max_uri_domains,
            hostname: if cfg.auth.authserv_id.is_empty() {
                hostname.to_string()
            } else {
                cfg.auth.authserv_id.clone()
            },
            add_header: cfg.auth.add_header,
            reject_dmarc: cfg.auth.reject_dmarc,
        })
    }

    /// The resolver.
    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    /// The host name checks run under.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    fn wanted(&self, ip: IpAddr) -> bool {
        !self.exclude_private || net::is_public(ip)
    }

    /// Address list queries for relays, the client first: the gateway's own lists ask about
    /// the client, the ruleset's last-external sets about relay `last` (the client unless the
    /// ruleset's networks trust it), its other sets about every relay.
    fn relay_queries(&self, relays: &[IpAddr], last: Option<usize>, out: &mut Vec<Query>) {
        for (k, &ip) in relays.iter().enumerate() {
            if !self.wanted(ip) {
                continue;
            }
            for l in self.lists.iter().filter(|l| l.target == Target::Client) {
                if k == 0 {
                    push(out, lists::ip_query(ip, &l.zone), false);
                }
            }
            for (_, zone, txt, last_only) in &self.plan.ip {
                if last == Some(k) || !last_only {
                    push(out, lists::ip_query(ip, zone), *txt);
                }
            }
        }
    }

    /// Whether the configuration asks URI lists about the message's domains.
    fn has_uri_lists(&self) -> bool {
        !self.plan.uri.is_empty()
            || !self.plan.uri_ip.is_empty()
            || self.lists.iter().any(|l| l.target == Target::Uri)
    }

    /// The URI list queries for some registrable domains.
    fn uri_queries(&self, domains: &[String], out: &mut Vec<Query>) {
        for d in domains {
            for l in self.lists.iter().filter(|l| l.target == Target::Uri) {
                push(out, lists::domain_query(d, &l.zone), false);
            }
            for zone in &self.plan.uri {
                push(out, lists::domain_query(d, zone), false);
            }
        }
    }

    /// Starts lookups for the URI domains of the message received so far, while DATA still
    /// streams in: the complete lines not yet read are searched for URIs, and so is the text of
    /// base64 and quoted-printable text parts as it is decoded line by line; the domains not
    /// asked yet are asked now, so their answers are on their way (or in the cache) when the
    /// message ends.
    pub fn stream_uris(&self, s: &mut Streamed, so_far: &[u8]) {
        if !self.lookups || !self.has_uri_lists() || s.scanned >= so_far.len() {
            return;
        }
        let Some(nl) = memchr::memrchr(b'\n', &so_far[s.scanned..]) else {
            return;
        };
        let end = s.scanned + nl + 1;
        let lines = &so_far[s.scanned..end];
        let decoded = s.parts.feed(lines);
        s.scanned = end;
        if s.domains.len() >= self.max_uri_domains {
            return;
        }
        // Found as the URI list finds them (`rules::view::uris`, which the lookups at the end of
        // the message read), so the domains asked early are those asked then; the raw lines of
        // HTML parts hold links, kept whatever their domain, so no URI is dropped for its
        // domain here.
        let r = &self.plan.redirectors;
        let mut uris = rules::sa_uris::text_uris(lines, true, r);
        if !decoded.is_empty() {
            uris.extend(rules::sa_uris::text_uris(&decoded, true, r));
        }
        let found = lists::uri_domains(
            uris.iter().map(String::as_str),
            &self.plan.skip,
            self.max_uri_domains,
        );
        let new: Vec<String> = found
            .into_iter()
            .filter(|d| !s.domains.contains(d))
            .take(self.max_uri_domains - s.domains.len())
            .collect();
        if new.is_empty() {
            return;
        }
        let mut q = Vec::new();
        self.uri_queries(&new, &mut q);
        q.retain(|x| !s.asked.contains(&x.name));
        s.domains.extend(new);
        if !q.is_empty() {
            s.asked.extend(q.iter().map(|x| x.name.clone()));
            s.answers.push(self.dns.lookup_all(q));
        }
    }

    /// Starts the client's list lookups at connect; `None` when the dns stage is off.
    pub fn client_lookups(&self, client: IpAddr) -> Option<Early> {
        if !self.lookups {
            return None;
        }
        let mut q = Vec::new();
        // The client is the last external relay unless the ruleset's networks hold it.
        self.relay_queries(&[client], self.plan.last_external(&[client]), &mut q);
        Some(Early {
            client,
            answers: (!q.is_empty()).then(|| self.dns.lookup_all(q)),
            name: None,
        })
    }

    /// Starts the lookup of the client's host name (PTR, confirmed by A/AAAA), once: called at
    /// MAIL, so the answer is in by the end of data.
    pub fn ask_client_name(&self, early: &mut Early) {
        if early.name.is_none() {
            early.name = Some(self.dns.client_name(early.client));
        }
    }

    /// Starts everything else for a message and gathers all answers. `client` is `None` for
    /// a scanned file (the newest `Received:` hop then stands for the client).
    pub async fn gather(
        &self,
        early: Option<Early>,
        streamed: Option<Streamed>,
        client: Option<IpAddr>,
        env: &Envelope,
        body: &Bytes,
        msg: &Message,
    ) -> Facts {
        // What was asked while DATA streamed in is not asked again; its answers join the rest.
        let s = self.start(
            early,
            streamed.as_ref().map(|st| &st.asked),
            client,
            env,
            body,
            msg,
        );
        let streamed = streamed.map_or_else(Vec::new, |st| st.answers);
        let slack = self.dns.timeout() * 3 + Duration::from_secs(1);
        let (lookups, early, auth, uri_ip) = (s.lookups, s.early, s.auth, s.uri_ip);
        let name = s.name;
        let during_data = async {
            let mut out = Vec::with_capacity(streamed.len());
            for p in streamed {
                out.extend(p.await);
            }
            out
        };
        let all = futures_lite::future::zip(
            futures_lite::future::zip(
                futures_lite::future::zip(answer(lookups), answer(early)),
                futures_lite::future::zip(answer(auth), answer(uri_ip)),
            ),
            futures_lite::future::zip(during_data, answer(name)),
        );
        // The service bounds every query; this only guards against a stopped service.
        let (((a, b), (c, d)), (e, name)) = crate::rt::timeout(slack, all)
            .await
            .unwrap_or((((None, None), (None, None)), (Vec::new(), None)));
        let mut facts = finish(s.facts, [a, b], c, d);
        facts.client_name = name;
        for answers in e {
            facts.absorb(answers);
        }
        facts
    }

    /// [`NetStage::gather`] for a plain thread (`mxgate scan`).
    pub fn gather_blocking(
        &self,
        client: Option<IpAddr>,
        env: &Envelope,
        body: &Bytes,
        msg: &Message,
    ) -> Facts {
        let s = self.start(None, None, client, env, body, msg);
        let a = s.lookups.and_then(Pending::wait);
        let c = s.auth.and_then(Pending::wait);
        let d = s.uri_ip.and_then(Pending::wait);
        finish(s.facts, [a, None], c, d)
    }

    /// Starts a message's lookups and checks on the resolver thread.
    fn start(
        &self,
        early: Option<Early>,
        asked: Option<&HashSet<String>>,
        client: Option<IpAddr>,
        env: &Envelope,
        body: &Bytes,
        msg: &Message,
    ) -> Started {
        let (facts, mut queries, auth_req) = self.prepare(early.as_ref(), client, env, body, msg);
        if let Some(asked) = asked {
            queries.retain(|q| !asked.contains(&q.name));
        }
        let (early, name) = match early {
            Some(e) => (e.answers, e.name),
            None => (None, None),
        };
        // A later message of the session asks again (the resolver's cache answers).
        let name = name.or_else(|| {
            client
                .filter(|_| self.lookups)
                .map(|c| self.dns.client_name(c))
        });
        Started {
            lookups: (!queries.is_empty()).then(|| self.dns.lookup_all(queries)),
            auth: auth_req.map(|r| self.dns.authenticate(r, self.dns.timeout() * 3)),
            uri_ip: self.uri_ip(&facts),
            early,
            name,
            facts,
        }
    }

    /// Starts the lookups of the addresses behind the message's URI domains, when the
    /// ruleset asks for them (`uridnssub`).
    fn uri_ip(&self, facts: &Facts) -> Option<Pending<(Vec<net::UriAddress>, net::Answers)>> {
        let domains: Vec<String> = facts
            .uri_domains
            .iter()
            .filter(|d| d.parse::<IpAddr>().is_err())
            .cloned()
            .collect();
        (self.lookups && !self.plan.uri_ip.is_empty() && !domains.is_empty()).then(|| {
            self.dns
                .uri_ip_lookups(domains, self.plan.uri_ip.clone(), self.exclude_private)
        })
    }

    fn prepare(
        &self,
        early: Option<&Early>,
        client: Option<IpAddr>,
        env: &Envelope,
        body: &Bytes,
        msg: &Message,
    ) -> (Facts, Vec<Query>, Option<auth::Request>) {
        let mut facts = Facts::default();
        let mut queries = Vec::new();
        let received = received_ips(msg);
        if self.lookups {
            let mut relays: Vec<IpAddr> = client.into_iter().collect();
            relays.extend(&received);
            relays.dedup();
            relays.retain(|&ip| self.wanted(ip));
            // What connect already asked is not asked again.
            let skip_first = early.is_some_and(|e| relays.first() == Some(&e.client));
            let mut q = Vec::new();
            self.relay_queries(&relays, self.plan.last_external(&relays), &mut q);
            if skip_first {
                let mut first = Vec::new();
                let client = &relays[..1];
                self.relay_queries(client, self.plan.last_external(client), &mut first);
                q.retain(|x| !first.contains(x));
            }
            queries.extend(q);
            facts.relays = relays;
            if self.has_uri_lists() {
                let uris = rules::view::uris(msg, &self.plan.redirectors);
                let domains = lists::uri_domains(
                    uris.iter().filter_map(|u| std::str::from_utf8(u).ok()),
                    &self.plan.skip,
                    self.max_uri_domains,
                );
                self.uri_queries(&domains, &mut queries);
                facts.uri_domains = domains;
                facts.uris = Some(uris);
            }
        }
        // A scanned file has no envelope: its newest hop and Return-Path stand in.
        let mail_from = if env.mail_from.is_empty() && client.is_none() {
            msg.header_text("Return-Path")
                .map(|r| {
                    r.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                })
                .unwrap_or_default()
        } else {
            env.mail_from.clone()
        };
        if self.lookups {
            for (template, txt) in &self.plan.ask {
                for (name, dkim) in expand(template, msg, &mail_from, &env.helo) {
                    push(&mut queries, name.clone(), *txt);
                    facts.askdns.push((template.clone(), name, dkim));
                }
            }
        }
        let auth_req = self.auth.then(|| auth::Request {
            client: client
                .or_else(|| received.first().copied())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            helo: env.helo.clone(),
            mail_from,
            hostname: self.hostname.clone(),
            message: body.clone(),
        });
        (facts, queries, auth_req)
    }

    /// Symbols of the gateway's own lists, of the auth results when no ruleset scores them,
    /// and the `Authentication-Results:` field.
    pub fn symbols(
        &self,
        facts: &Facts,
        ruleset_scores_auth: bool,
        symbols: &mut Vec<(Cow<'static, str>, f64)>,
        headers: &mut String,
    ) {
        for l in &self.lists {
            let listed = match l.target {
                Target::Client => facts.relays.first().is_some_and(|&ip| {
                    facts
                        .a
                        .get(&lists::ip_query(ip, &l.zone))
                        .is_some_and(|a| l.subtest.any(a))
                }),
                Target::Uri => facts.uri_domains.iter().any(|d| {
                    facts
                        .a
                        .get(&lists::domain_query(d, &l.zone))
                        .is_some_and(|a| l.subtest.any(a))
                }),
            };
            if listed {
                symbols.push((Cow::Owned(l.symbol.clone()), l.score));
            }
        }
        if facts.timed_out > 0 {
            symbols.push((Cow::Borrowed("DNS_TIMEOUT"), 0.0));
        }
        if let Some(r) = &facts.auth {
            if !ruleset_scores_auth {
                for s in r.symbols() {
                    let score = AUTH_SCORES
                        .iter()
                        .find(|(n, _)| *n == s)
                        .map_or(0.0, |(_, v)| *v);
                    symbols.push((Cow::Borrowed(s), score));
                }
            }
            if self.add_header && !r.header.is_empty() {
                headers.push_str(&r.header);
            }
        }
    }
}

fn push(out: &mut Vec<Query>, name: String, txt: bool) {
    let q = Query { name, txt };
    if !out.contains(&q) {
        out.push(q);
    }
}

/// URI lookups started while a message's DATA streams in ([`NetStage::stream_uris`]).
#[derive(Default)]
pub struct Streamed {
    /// Bytes of the message already searched (up to a line end).
    scanned: usize,
    /// The encoded text parts, decoded as their lines arrive.
    parts: mxgate_core::mime::stream::EncodedText,
    /// Registrable domains found so far.
    domains: Vec<String>,
    /// Query names asked.
    asked: HashSet<String>,
    /// The batches' answers on their way.
    answers: Vec<Pending<Answers>>,
}

/// A message's checks under way.
struct Started {
    facts: Facts,
    lookups: Option<Pending<Answers>>,
    early: Option<Pending<Answers>>,
    /// The client's host name, asked at connect.
    name: Option<Pending<String>>,
    auth: Option<Pending<auth::Results>>,
    uri_ip: Option<Pending<(Vec<net::UriAddress>, Answers)>>,
}

/// A started check's answer; `None` when it was not started or the service stopped.
async fn answer<T>(p: Option<Pending<T>>) -> Option<T> {
    match p {
        Some(p) => p.await,
        None => None,
    }
}

/// Files the answers into the facts.
fn finish(
    mut facts: Facts,
    lookups: [Option<Answers>; 2],
    auth: Option<auth::Results>,
    uri_ip: Option<(Vec<net::UriAddress>, Answers)>,
) -> Facts {
    for a in lookups.into_iter().flatten() {
        facts.absorb(a);
    }
    if let Some((ips, answers)) = uri_ip {
        facts.uri_ips = ips;
        facts.absorb(answers);
    }
    facts.auth = auth;
    facts
}

/// The relay addresses of the `Received:` fields, newest first: the bracketed address of
/// each `from` clause (`from host (name [192.0.2.1])`).
pub fn received_ips(msg: &Message) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let Some(root) = msg.parts.first() else {
        return out;
    };
    for f in &root.fields {
        if !f.name(&msg.raw).eq_ignore_ascii_case(b"received") {
            continue;
        }
        let v = String::from_utf8_lossy(f.raw_value(&msg.raw));
        let from_part = v.split(" by ").next().unwrap_or(&v);
        let mut rest = from_part;
        while let Some(i) = rest.find('[') {
            let after = &rest[i + 1..];
            let Some(j) = after.find(']') else { break };
            let lit = after[..j]
                .trim_start_matches("IPv6:")
                .trim_start_matches("ipv6:");
            if let Ok(ip) = lit.parse::<IpAddr>() {
                out.push(ip);
                break;
            }
            rest = &after[j + 1..];
        }
    }
    out
}

/// The query names of an `askdns` template for a message, each with the signing domain it was
/// made for (`_DKIMDOMAIN_`); none when a tag it uses has no value here.
fn expand(
    template: &str,
    msg: &Message,
    mail_from: &str,
    helo: &str,
) -> Vec<(String, Option<String>)> {
    let domain_of = |a: &str| {
        a.rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('>').trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
    };
    let mut out = vec![(template.to_string(), None::<String>)];
    let mut fill = |tag: &str, values: Vec<(String, bool)>| {
        if !template.contains(tag) {
            return;
        }
        let mut next = Vec::new();
        for (q, d) in &out {
            for (v, is_dkim) in &values {
                let dkim = if *is_dkim { Some(v.clone()) } else { d.clone() };
                next.push((q.replace(tag, v), dkim));
            }
        }
        out = next;
    };
    let author = msg.header_text("From").and_then(|f| {
        let addr = f
            .rsplit_once('<')
            .map_or(f.as_str(), |(_, a)| a.split('>').next().unwrap_or(a))
            .trim()
            .to_string();
        domain_of(&addr)
    });
    fill(
        "_AUTHORDOMAIN_",
        author.into_iter().map(|d| (d, false)).collect(),
    );
    fill(
        "_SENDERDOMAIN_",
        domain_of(mail_from)
            .into_iter()
            .map(|d| (d, false))
            .collect(),
    );
    let helo = helo.trim().trim_end_matches('.').to_ascii_lowercase();
    fill(
        "_LASTEXTERNALHELO_",
        (!helo.is_empty() && !helo.starts_with('['))
            .then_some((helo, false))
            .into_iter()
            .collect(),
    );
    let mut dkim: Vec<(String, bool)> = Vec::new();
    if let Some(root) = msg.parts.first() {
        for f in &root.fields {
            if !f.name(&msg.raw).eq_ignore_ascii_case(b"dkim-signature") {
                continue;
            }
            let v = String::from_utf8_lossy(f.raw_value(&msg.raw)).to_string();
            for tag in v.split(';') {
                if let Some(d) = tag.trim().strip_prefix("d=") {
                    let d: String = d
                        .split_whitespace()
                        .collect::<String>()
                        .to_ascii_lowercase();
                    if !d.is_empty() && !dkim.iter().any(|(x, _)| *x == d) {
                        dkim.push((d, true));
                    }
                }
            }
        }
    }
    fill("_DKIMDOMAIN_", dkim);
    // A tag left unexpanded (unknown here, or without a value) makes no query.
    out.retain(|(q, _)| {
        !q.split('.')
            .any(|l| l.len() > 2 && l.starts_with('_') && l.ends_with('_'))
    });
    out
}
