//! SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489) and ARC (RFC 8617) through the
//! `mail-auth` crate, on the resolver service, with the results as plain data: the symbols the
//! SpamAssassin ruleset names (`SPF_PASS`, `DKIM_VALID_AU`, `DMARC_REJECT`, ...) and an
//! `Authentication-Results` field (RFC 8601).
//!
//! The checks run in the order their dependencies allow: SPF for HELO and MAIL FROM, DKIM and
//! ARC at once, then DMARC from both. All of it is one task on the resolver thread, so a
//! message's DNS queries for keys and policies overlap with its blocklist queries and with the
//! content scan on the shard.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, SpfResult};

use super::{Dns, Pending};

/// What a check found, reduced to its RFC result word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// SPF `softfail`.
    SoftFail,
    /// SPF `neutral`, or a DKIM signature that could not be evaluated.
    Neutral,
    /// Nothing to check (no record, no signature).
    #[default]
    None,
    /// A transient error (DNS).
    TempError,
    /// A permanent error (a broken record or key).
    PermError,
}

impl Outcome {
    fn spf(r: SpfResult) -> Outcome {
        match r {
            SpfResult::Pass => Outcome::Pass,
            SpfResult::Fail => Outcome::Fail,
            SpfResult::SoftFail => Outcome::SoftFail,
            SpfResult::Neutral => Outcome::Neutral,
            SpfResult::TempError => Outcome::TempError,
            SpfResult::PermError => Outcome::PermError,
            SpfResult::None => Outcome::None,
        }
    }

    fn dkim(r: &DkimResult) -> Outcome {
        match r {
            DkimResult::Pass => Outcome::Pass,
            DkimResult::Neutral(_) => Outcome::Neutral,
            DkimResult::Fail(_) => Outcome::Fail,
            DkimResult::PermError(_) => Outcome::PermError,
            DkimResult::TempError(_) => Outcome::TempError,
            DkimResult::None => Outcome::None,
        }
    }

    fn dmarc(r: &DmarcResult) -> Outcome {
        match r {
            DmarcResult::Pass => Outcome::Pass,
            DmarcResult::Fail(_) => Outcome::Fail,
            DmarcResult::TempError(_) => Outcome::TempError,
            DmarcResult::PermError(_) => Outcome::PermError,
            DmarcResult::None => Outcome::None,
        }
    }
}

/// The DMARC policy of the author domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmarcPolicy {
    /// `p=none` (or no record).
    #[default]
    None,
    /// `p=quarantine`.
    Quarantine,
    /// `p=reject`.
    Reject,
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The result.
    pub outcome: Outcome,
    /// Its `d=` domain (empty when the field could not be parsed).
    pub domain: String,
    /// The domain it speaks for, lower case: that of its `i=` identity when it has one, else
    /// its `d=` (SpamAssassin's SDID, which `check_dkim_valid(DOMAIN, ...)` matches; empty when
    /// the field could not be parsed).
    pub identity_domain: String,
}

impl Signature {
    /// A signature with this outcome and `d=` domain (and no `i=` of another domain).
    pub fn new(outcome: Outcome, domain: &str) -> Signature {
        Signature {
            outcome,
            domain: domain.to_string(),
            identity_domain: domain.to_ascii_lowercase(),
        }
    }
}

/// Everything the checks found about one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Results {
    /// SPF for the MAIL FROM identity (the HELO identity for a null sender).
    pub spf: Outcome,
    /// SPF for the HELO identity.
    pub spf_helo: Outcome,
    /// Each DKIM signature.
    pub dkim: Vec<Signature>,
    /// The author (From:) domain.
    pub author_domain: String,
    /// DMARC's result for the author domain.
    pub dmarc: Outcome,
    /// The author domain's policy, when it has a DMARC record.
    pub dmarc_policy: Option<DmarcPolicy>,
    /// The ARC chain's result (`None` when the message has no ARC set).
    pub arc: Outcome,
    /// The `Authentication-Results:` field, CRLF-terminated.
    pub header: String,
    /// The envelope sender's domain, lower case (empty for the null sender).
    pub envelope_domain: String,
}

impl Results {
    /// Whether a signature of `domain` itself (any case; not a parent) verified.
    pub fn dkim_valid_for(&self, domain: &str) -> bool {
        !domain.is_empty()
            && self
                .dkim
                .iter()
                .any(|s| s.outcome == Outcome::Pass && s.domain.eq_ignore_ascii_case(domain))
    }

    /// DKIM.pm's `_check_dkim_signed_by` for `check_dkim_signed(DOMAIN, ...)` and
    /// `check_dkim_valid(DOMAIN, ...)`: a signature (one that verified, with `valid`) speaking
    /// for one of `domains`: that domain exactly, or with `*.` or `.` before it, the domain or
    /// any under it.
    pub fn dkim_signed_by(&self, valid: bool, domains: &[String]) -> bool {
        self.dkim.iter().any(|s| {
            let sdid = s.identity_domain.as_str();
            (!valid || s.outcome == Outcome::Pass)
                && !sdid.is_empty()
                && domains.iter().any(|ad| {
                    let ad = ad.to_ascii_lowercase();
                    match ad.strip_prefix("*.").or_else(|| ad.strip_prefix('.')) {
                        Some(d) => {
                            sdid == d || sdid.strip_suffix(d).is_some_and(|p| p.ends_with('.'))
                        }
                        None => sdid == ad,
                    }
                })
        })
    }

    /// Whether a signature verified.
    pub fn dkim_valid(&self) -> bool {
        self.dkim.iter().any(|s| s.outcome == Outcome::Pass)
    }

    /// Whether a signature of the author domain (or a parent of it) verified.
    pub fn dkim_valid_author(&self) -> bool {
        let a = self.author_domain.to_ascii_lowercase();
        !a.is_empty()
            && self.dkim.iter().any(|s| {
                let d = s.domain.to_ascii_lowercase();
                s.outcome == Outcome::Pass && (a == d || a.ends_with(&format!(".{d}")))
            })
    }

    /// Whether DMARC failed for an author domain whose policy is `p=reject`.
    pub fn dmarc_rejects(&self) -> bool {
        self.dmarc == Outcome::Fail && self.dmarc_policy == Some(DmarcPolicy::Reject)
    }

    /// The symbols the SpamAssassin ruleset names for these results.
    pub fn symbols(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        out.push(match self.spf {
            Outcome::Pass => "SPF_PASS",
            Outcome::Fail => "SPF_FAIL",
            Outcome::SoftFail => "SPF_SOFTFAIL",
            Outcome::Neutral => "SPF_NEUTRAL",
            Outcome::None => "SPF_NONE",
            Outcome::TempError => "T_SPF_TEMPERROR",
            Outcome::PermError => "T_SPF_PERMERROR",
        });
        out.push(match self.spf_helo {
            Outcome::Pass => "SPF_HELO_PASS",
            Outcome::Fail => "SPF_HELO_FAIL",
            Outcome::SoftFail => "SPF_HELO_SOFTFAIL",
            Outcome::Neutral => "SPF_HELO_NEUTRAL",
            Outcome::None => "SPF_HELO_NONE",
            Outcome::TempError => "T_SPF_HELO_TEMPERROR",
            Outcome::PermError => "T_SPF_HELO_PERMERROR",
        });
        if !self.dkim.is_empty() {
            out.push("DKIM_SIGNED");
            if self.dkim_valid() {
                out.push("DKIM_VALID");
                if self.dkim_valid_author() {
                    out.push("DKIM_VALID_AU");
                }
                // `check_dkim_valid_envelopefrom`: a valid signature of the envelope sender's
                // domain itself.
                if self.dkim_valid_for(&self.envelope_domain) {
                    out.push("DKIM_VALID_EF");
                }
            } else {
                out.push("DKIM_INVALID");
            }
        }
        match (self.dmarc, self.dmarc_policy) {
            (_, None) => out.push("DMARC_MISSING"),
            (Outcome::Pass, Some(_)) => out.push("DMARC_PASS"),
            _ if self.dmarc_rejects() => out.push("DMARC_REJECT"),
            (Outcome::Fail, Some(DmarcPolicy::Quarantine)) => out.push("DMARC_QUAR"),
            (Outcome::Fail, Some(DmarcPolicy::None)) => out.push("DMARC_NONE"),
            _ => {}
        }
        match self.arc {
            Outcome::None => {}
            Outcome::Pass => out.extend(["ARC_SIGNED", "ARC_VALID"]),
            _ => out.extend(["ARC_SIGNED", "ARC_INVALID"]),
        }
        out
    }
}

/// What the checks need from the session.
#[derive(Debug, Clone)]
pub struct Request {
    /// The client's address.
    pub client: IpAddr,
    /// The HELO/EHLO name.
    pub helo: String,
    /// MAIL FROM (empty for the null sender).
    pub mail_from: String,
    /// This host's name (the `authserv-id` and SPF's `r` macro).
    pub hostname: String,
    /// The message as received.
    pub message: Bytes,
}

impl Dns {
    /// Runs SPF, DKIM, ARC and DMARC for a message on the resolver thread, within `budget`
    /// (SPF alone may take ten lookups in a row); past it every result is a temporary error.
    pub fn authenticate(&self, req: Request, budget: Duration) -> Pending<Results> {
        self.run(move |auth| async move {
            match tokio::time::timeout(budget, check(&auth, &req)).await {
                Ok(r) => r,
                Err(_) => Results {
                    spf: Outcome::TempError,
                    spf_helo: Outcome::TempError,
                    dmarc: Outcome::TempError,
                    dmarc_policy: Some(DmarcPolicy::None),
                    header: format!(
                        "Authentication-Results: {};\r\n\tspf=temperror (DNS timed out)\r\n",
                        req.hostname
                    ),
                    ..Results::default()
                },
            }
        })
    }

    /// SPF alone for the MAIL FROM identity (greylisting's SPF exemption, at RCPT).
    pub fn spf(
        &self,
        client: IpAddr,
        helo: String,
        mail_from: String,
        hostname: String,
    ) -> Pending<Outcome> {
        let budget = self.timeout() * 2;
        self.run(move |auth| async move {
            let helo = helo.trim_start_matches('[').trim_end_matches(']');
            let p = SpfParameters::verify_mail_from(client, helo, &hostname, &mail_from);
            match tokio::time::timeout(budget, auth.verify_spf(p)).await {
                Ok(o) => Outcome::spf(o.result()),
                Err(_) => Outcome::TempError,
            }
        })
    }
}

async fn check(auth: &mail_auth::MessageAuthenticator, req: &Request) -> Results {
    let helo = req.helo.trim_start_matches('[').trim_end_matches(']');
    let spf_helo = auth
        .verify_spf(SpfParameters::verify_ehlo(req.client, helo, &req.hostname))
        .await;
    let spf = if req.mail_from.is_empty() {
        spf_helo.clone()
    } else {
        auth.verify_spf(SpfParameters::verify_mail_from(
            req.client,
            helo,
            &req.hostname,
            &req.mail_from,
        ))
        .await
    };
    let sender = if req.mail_from.is_empty() {
        format!("postmaster@{helo}")
    } else {
        req.mail_from.clone()
    };
    let spf_domain = req
        .mail_from
        .rsplit_once('@')
        .map_or(helo, |(_, d)| d)
        .to_string();
    let mut results = Results {
        spf: Outcome::spf(spf.result()),
        spf_helo: Outcome::spf(spf_helo.result()),
        envelope_domain: req
            .mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
        ..Results::default()
    };
    let Some(msg) = AuthenticatedMessage::parse(&req.message) else {
        // No header block mail-auth can read: SPF stands alone.
        results.header = AuthenticationResults::new(&req.hostname)
            .with_spf_mailfrom_result(&spf, req.client, &sender, helo)
            .to_header();
        return results;
    };
    let (dkim, arc) = futures_join(auth.verify_dkim(&msg), auth.verify_arc(&msg)).await;
    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(&msg, &dkim, &spf_domain, &spf))
        .await;
    results.dkim = dkim
        .iter()
        .map(|o| {
            let (d, i) = o
                .signature()
                .map(|s| (s.d.as_str(), s.i.as_str()))
                .unwrap_or_default();
            // `$sig->identity =~ /\@(\S+)/`; Mail::DKIM's identity is `@d` without an `i=`.
            let identity = match i.split_once('@') {
                Some((_, after)) if !i.is_empty() => {
                    after.split(char::is_whitespace).next().unwrap_or_default()
                }
                _ => d,
            };
            Signature {
                outcome: Outcome::dkim(o.result()),
                domain: d.to_string(),
                identity_domain: identity.to_ascii_lowercase(),
            }
        })
        .collect();
    // Signature fields mail-auth could not parse give no output; they are still signatures
    // (SpamAssassin's DKIM_SIGNED: "not necessarily valid").
    let fields = msg
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"dkim-signature"))
        .count();
    while results.dkim.len() < fields {
        results.dkim.push(Signature::new(Outcome::PermError, ""));
    }
    results.author_domain = dmarc.domain().to_string();
    results.dmarc = Outcome::dmarc(&dmarc.result());
    results.dmarc_policy = dmarc.dmarc_record().map(|_| match dmarc.policy() {
        Policy::Reject => DmarcPolicy::Reject,
        Policy::Quarantine => DmarcPolicy::Quarantine,
        Policy::None | Policy::Unspecified => DmarcPolicy::None,
    });
    let arc_present = !msg.as_headers.is_empty() || !msg.ams_headers.is_empty();
    results.arc = if !arc_present {
        Outcome::None
    } else {
        Outcome::dkim(arc.result())
    };
    let mut ar = AuthenticationResults::new(&req.hostname)
        .with_dkim_results(&dkim, msg.from.first().map_or("", String::as_str))
        .with_spf_mailfrom_result(&spf, req.client, &sender, helo)
        .with_dmarc_result(&dmarc);
    if arc_present {
        ar = ar.with_arc_result(&arc, req.client);
    }
    results.header = ar.to_header();
    results
}

/// Both futures to completion, polled together.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_by_matches_domains_as_spamassassin_does() {
        let mut by_identity = Signature::new(Outcome::Pass, "example.net");
        by_identity.identity_domain = "lists.example.org".into();
        let r = Results {
            dkim: vec![
                Signature::new(Outcome::Pass, "LinkedIn.com"),
                Signature::new(Outcome::Fail, "googlegroups.com"),
                by_identity,
            ],
            ..Results::default()
        };
        let d = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(r.dkim_signed_by(true, &d(&["linkedin.com"])));
        // A signature that failed is signed but not valid.
        assert!(!r.dkim_signed_by(true, &d(&["googlegroups.com", "yahoogroups.com"])));
        assert!(r.dkim_signed_by(false, &d(&["googlegroups.com"])));
        // A plain domain is that domain alone; `*.` and `.` take the domains under it too.
        assert!(!r.dkim_signed_by(true, &d(&["example.org"])));
        assert!(r.dkim_signed_by(true, &d(&["*.example.org"])));
        assert!(r.dkim_signed_by(true, &d(&[".example.org"])));
        assert!(!r.dkim_signed_by(true, &d(&["*.ample.org"])));
        // The identity's domain is what counts, not `d=`.
        assert!(!r.dkim_signed_by(true, &d(&["example.net"])));
    }
}
