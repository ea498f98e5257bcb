//! Eval rules implemented natively: the DNS list tests (`check_rbl*`, `check_uridnsbl` over
//! `urirhssub`/`urirhsbl`), the authentication tests (`check_for_spf_*`, `check_dkim_*`,
//! `check_dmarc_*`, `check_arc_*`) and header tests of SpamAssassin's HeaderEval plugin.
//!
//! A call is parsed once, when the engine is built ([`Call::parse`]); a function this module
//! does not know stays an unimplemented eval rule that never hits, as before. Network tests read
//! what the DNS and auth stages found ([`crate::net::Facts`]); without those facts (no `dns`
//! stage, or `mxgate scan` without it) they do not hit, as SpamAssassin's do with network
//! tests off. The engine's [`DnsPlan`] says which lookups the ruleset asks for, so the DNS
//! stage can start them before the content scan.

use mxgate_core::mime::decode::{utf8_lossy, utf8_lossy_owned};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use mxgate_core::mime::{Message, PartKind};

use crate::net::lists::{self, Subtest};
use crate::net::{auth, Facts};

use super::engine::header_value;
use super::view::{line_slices, Headers};

/// A parsed eval call.
#[derive(Debug, Clone)]
pub enum Call {
    /// `check_rbl('set', 'zone'[, 'subtest'])`, `check_rbl_txt(...)`.
    Rbl {
        /// The set name (`zen-lastexternal`).
        set: String,
        /// The DNS zone.
        zone: String,
        /// Which answers count.
        subtest: Subtest,
        /// TXT lookups rather than A.
        txt: bool,
    },
    /// `check_rbl_sub('set', 'subtest')`: another reading of a set's answers.
    RblSub {
        /// The set name.
        set: String,
        /// Which answers count.
        subtest: Subtest,
    },
    /// `check_uridnsbl('NAME')`, or an `urirhssub`/`urirhsbl` definition itself.
    UriBl {
        /// The DNS zone.
        zone: String,
        /// Which answers count.
        subtest: Subtest,
    },
    /// `uridnssub`/`uridnsbl`: the addresses behind a URI's domain (its name servers', or with
    /// tflags `a` its own A records) looked up on an address list.
    UriIp {
        /// The DNS zone.
        zone: String,
        /// Which answers count.
        subtest: Subtest,
        /// The domain's own A records rather than its name servers'.
        a_records: bool,
    },
    /// `askdns NAME QUERY TYPE /regex/`: a query built from the message (`_AUTHORDOMAIN_`,
    /// `_SENDERDOMAIN_`, `_DKIMDOMAIN_`, `_LASTEXTERNALHELO_`), its answers matched as text.
    AskDns {
        /// The query with its template tags.
        template: String,
        /// TXT rather than A.
        txt: bool,
        /// What an answer must match.
        answer: regex::Regex,
    },
    /// An SPF, DKIM, DMARC or ARC result.
    Auth(AuthTest),
    /// `check_dkim_signed(DOMAIN, ...)`, `check_dkim_valid(DOMAIN, ...)`: a signature (one
    /// that verified, with `valid`) for one of the domains (`*.domain`: it or any under it).
    DkimSignedBy {
        /// Only signatures that verified count.
        valid: bool,
        /// The domains, as the rule names them.
        domains: Vec<String>,
    },
    /// `check_for_missing_to_header()`.
    MissingTo,
    /// A sender address on an address list: `check_from_in_list('LIST')`,
    /// `check_from_in_welcomelist()` (`welcomelist_from`), `check_from_in_blocklist()`.
    FromInList(String),
    /// A recipient address on an address list: `check_to_in_list('LIST')`,
    /// `check_to_in_welcomelist()`, `check_to_in_more_spam()`, `check_to_in_all_spam()`,
    /// `check_to_in_blocklist()`.
    ToInList(String),
    /// The Reply-To address on an address list: `check_replyto_in_list('LIST')`.
    ReplyToInList(String),
    /// `check_for_spf_welcomelist_from()` (`welcomelist_from_spf`, `welcomelist_auth`), with
    /// `def` the `def_` lists: the envelope sender on the list, and SPF passed for it.
    SpfWelcomelist {
        /// The default (ruleset) lists rather than the user's.
        def: bool,
    },
    /// `check_for_dkim_welcomelist_from()` (`welcomelist_from_dkim`, `welcomelist_auth`), with
    /// `def` the `def_` lists: an author address on the list, and a valid DKIM signature of an
    /// accepted signing domain (the author's own, or the one the entry names).
    DkimWelcomelist {
        /// The default (ruleset) lists rather than the user's.
        def: bool,
    },
    /// The Subject on a subject list: `check_subject_in_welcomelist()`,
    /// `check_subject_in_blocklist()`.
    SubjectInList(String),
    /// A URI's host (or a parent domain) on a URI host list: `check_uri_host_listed('LIST')`,
    /// `check_uri_host_in_blocklist()` (`BLOCK`), `check_uri_host_in_welcomelist()` (`WELCOME`).
    UriHostListed(String),
    /// `subject_is_all_caps()`.
    SubjectAllCaps,
    /// `check_for_to_in_subject('address'|'user')`.
    ToInSubject {
        /// Whole address (`address`) or its user part (`user`).
        user: bool,
    },
    /// `check_for_shifted_date(min, max)`: the Date: header against the Received: dates, in
    /// hours (`undef` for no bound).
    ShiftedDate {
        /// Lower bound (inclusive).
        min: Option<f64>,
        /// Upper bound (exclusive).
        max: Option<f64>,
    },
    /// `check_msg_parse_flags('flag')`: a flag SpamAssassin's parser left on the message
    /// ([`super::sa_parse`]).
    ParseFlag(String),
    /// `check_uri_truncated()`: a URI cut at `MAX_URI_LENGTH` while the URIs were listed.
    UriTruncated,
    /// `check_https_http_mismatch(min, max)`: in an HTML part with at least `min` and fewer
    /// than `max` links to valid domains, one whose text shows an `https://` URL of another
    /// domain.
    HttpsHttpMismatch {
        /// Fewest links (`1` when not given).
        min: usize,
        /// Fewer links than this (no bound when not given).
        max: Option<usize>,
    },
    /// `check_https_ip_mismatch()`: a link to an IP address whose text shows an `https:` URL
    /// that is not one to an IP address.
    HttpsIpMismatch,
    /// `check_iframe_src()`: an `iframe` with a source.
    IframeSrc,
    /// `check_blank_line_ratio(min, max, minlines)`: the share of blank lines in the decoded
    /// text parts, in per cent (-1 below `minlines` lines), above `min` (or from 0 when `min` is
    /// 0) and at most `max`.
    BlankLineRatio {
        /// Lower bound (exclusive, unless 0).
        min: f64,
        /// Upper bound (inclusive).
        max: f64,
        /// Fewest lines for a ratio.
        min_lines: usize,
    },
    /// `check_stock_info(min)`: at least `min` distinct stock-tip field names (`Symbol:`,
    /// `Target:`, `Sector:` ...) in the first text/plain part.
    StockInfo(usize),
    /// `check_for_mime('name')`: one of MIMEEval's part statistics.
    Mime(MimeTest),
    /// `check_for_mime_html()`.
    MimeHtml,
    /// `check_for_mime_html_only()`.
    MimeHtmlOnly,
    /// `check_mime_multipart_ratio(min, max)`: text/plain over text/html size in an
    /// alternative.
    MultipartRatio {
        /// Lower bound (inclusive).
        min: f64,
        /// Upper bound (exclusive).
        max: f64,
    },
    /// `check_ma_non_text()`.
    MaNonText,
    /// `check_base64_length(min[, max])`: the longest base64 line.
    Base64Length {
        /// Lower bound (inclusive).
        min: usize,
        /// Upper bound (inclusive).
        max: Option<usize>,
    },
    /// `check_outlook_message_id()`: an Outlook-style Message-ID whose time does not fit the
    /// Date: or Received: time.
    OutlookMessageId,
    /// `check_header_count_range('Header', min, max)`: distinct values of a header.
    HeaderCount {
        /// The header.
        header: String,
        /// Least count.
        min: usize,
        /// Most count.
        max: usize,
    },
    /// `check_for_ascii_text_illegal()`.
    AsciiTextIllegal,
    /// `sorted_recipients()`: seven or more To/Cc addresses in sorted order.
    SortedRecipients,
    /// `similar_recipients(min, max)`: how alike five or more To/Cc addresses are.
    SimilarRecipients {
        /// Lower bound (inclusive).
        min: Option<f64>,
        /// Upper bound (exclusive).
        max: Option<f64>,
    },
    /// `check_unresolved_template()`: a `%TEMPLATE` left in a header.
    UnresolvedTemplate,
    /// `check_ratware_name_id()`: a 28-capital Message-ID whose right part is the From address
    /// behind a quoted name.
    RatwareNameId,
    /// `check_freemail_header('Header'[, 'regex'])`: an address of the header at a free mail
    /// provider (and matching the pattern).
    FreemailHeader {
        /// The header request (`Reply-To`, `EnvelopeFrom`, `Reply-To:addr`).
        header: String,
        /// What the address must match as well.
        pattern: Option<regex::Regex>,
    },
    /// `check_freemail_from(['regex'])`: a sender address at a free mail provider.
    FreemailFrom(Option<regex::Regex>),
    /// `check_freemail_replyto(['replyto'|'reply'])`: From and Reply-To different free mail
    /// addresses, or the reply address a free mail one and another free mail address in the
    /// body. `true` for `'reply'` (the From address stands in when there is no Reply-To).
    FreemailReplyto(bool),
    /// `multipart_alternative_difference(min, max)`: the largest share (%) of an alternative's
    /// HTML words that its text part lacks.
    MpartAltDiff {
        /// Lower bound (exclusive; 0: none).
        min: f64,
        /// Upper bound (inclusive).
        max: Option<f64>,
    },
    /// `multipart_alternative_difference_count(ratio, minhtml)`: text words over HTML words
    /// of the last alternative with HTML words.
    MpartAltDiffCount {
        /// The ratio to exceed.
        ratio: f64,
        /// HTML words needed (exclusive).
        min_html: f64,
    },
    /// `check_abundant_unicode_ratio(ratio)`.
    UnicodeRatio(f64),
    /// `check_for_forged_gmail_received_headers()`: From: gmail.com without Google's relay
    /// headers.
    ForgedGmail,
    /// `html_test('html')`: the message has an HTML part (HTML_MESSAGE).
    HtmlMessage,
    /// `html_tag_exists('tag')`.
    HtmlTagExists(String),
    /// `html_tag_balance('tag', 'OP N')`: opened minus closed, compared.
    HtmlTagBalance {
        /// The tag.
        tag: String,
        /// `==`, `!=`, `<`, `<=`, `>`, `>=`.
        op: String,
        /// The number compared with.
        n: i64,
    },
    /// `html_image_only(min, max)`: an HTML part with an image and between min (exclusive)
    /// and max (inclusive) characters of HTML.
    HtmlImageOnly {
        /// Lower bound (exclusive).
        min: f64,
        /// Upper bound (inclusive).
        max: f64,
    },
    /// `check_dkim_valid_envelopefrom()`: a signature that verified was made by the envelope
    /// sender's domain.
    DkimValidEnvelopeFrom,
    /// VBounce: `have_any_bounce_relays()` (`welcomelist_bounce_relays` names any relay) or,
    /// with `found`, `check_welcomelist_bounce_relays()` (a `Received:` line quoted in the
    /// body, a bounced message's, names one of them: mail this site sent).
    BounceRelays {
        /// Look for them in the body.
        found: bool,
    },
    /// `check_from_in_welcomelist()` (a sender on `welcomelist_from`, or on
    /// `welcomelist_from_rcvd` and relayed by the host it names) or, with `def`,
    /// `check_from_in_default_welcomelist()` (`def_welcomelist_from_rcvd`).
    FromInWelcomelist {
        /// The default list.
        def: bool,
    },
    /// `check_forged_in_welcomelist()`, `check_forged_in_default_welcomelist()`: a sender
    /// on the relay-checked list that came through another relay, and on neither list as
    /// welcome.
    ForgedInWelcomelist {
        /// The default list.
        def: bool,
    },
    /// `html_test('embeds'|'font_face_bad'|'form_action_mailto'|'font_low_contrast'|
    /// 'font_invalid_color')`: a flag of an HTML part.
    HtmlTest(HtmlFlag),
    /// `html_eval('test', 'OP N')`: a value of an HTML part compared with a number.
    HtmlEval {
        /// Which value.
        test: HtmlValue,
        /// `==`, `!=`, `<`, `<=`, `>`, `>=`.
        op: String,
        /// The number compared with.
        n: f64,
    },
    /// `html_title_subject_ratio(ratio)`: an HTML part's longest title is more than `ratio`
    /// times as long as the Subject.
    HtmlTitleSubjectRatio(f64),
    /// `html_image_ratio(min, max)`: non-space rendered characters per pixel of image area.
    HtmlImageRatio {
        /// Lower bound (exclusive).
        min: f64,
        /// Upper bound (inclusive).
        max: f64,
    },
    /// `html_range('closed_extra_ratio'|'bad_tag_ratio'|'non_element_ratio'|'length', min,
    /// max)`: min < value <= max (`inf` for no upper bound).
    HtmlRange {
        /// Which value.
        test: HtmlValue,
        /// Lower bound (exclusive).
        min: f64,
        /// Upper bound (inclusive); `None` for `inf`.
        max: Option<f64>,
    },
    /// `tvd_vertical_words(min, max)`: the largest share of spaces among a body paragraph's
    /// other characters, in percent (100 where spaces are the majority), at least `min` and
    /// below `max` (101 for 100 and above).
    VerticalWords {
        /// Lower bound (inclusive).
        min: f64,
        /// Upper bound (exclusive).
        max: f64,
    },
    /// `check_for_uppercase(min, max)`: the share of upper-case letters in the body text.
    Uppercase {
        /// Lower bound (exclusive), percent.
        min: f64,
        /// Upper bound (inclusive), percent.
        max: f64,
    },
    /// `check_body_length(max)`: the body as received is at most this many bytes.
    BodyLength(usize),
    /// `check_mime_anomaly('NAME')` (mxgate's own): the MIME parser found this anomaly
    /// (`mime::Anomaly::name`, such as `MULTIPART_NO_BOUNDARY`), for local rules to score.
    MimeAnomaly(String),
    /// A charset of another script than `ok_locales` allow: `check_for_faraway_charset()` (the
    /// message's charset, with mostly 8-bit text), `check_for_faraway_charset_in_headers()`
    /// (encoded words of From and Subject), `html_charset_faraway()` (HTML `<meta>` charsets).
    Faraway(Faraway),
    /// An envelope-sender test: `check_for_matching_env_and_hdr_from()`,
    /// `check_ratware_envelope_from()`, `check_equal_from_domains()`,
    /// `check_mailfrom_matches_rcvd()`.
    Envelope(EnvTest),
    /// An ImageInfo test.
    Image(ImageTest),
    /// `html_text_match('comment'|'title', 'regex')`: an HTML part's comment or title matches.
    HtmlTextMatch {
        /// Which texts: comments, titles or links' texts.
        texts: HtmlTexts,
        /// The pattern, as Perl reads it.
        pattern: std::sync::Arc<pcre2::bytes::Regex>,
    },
    /// A test of the relays the Received fields describe (RelayEval, and HeaderEval's forged
    /// Received checks).
    Relay(super::relays::Test),
    /// `check_for_from_domain_in_received_headers('domain', 'true'|'false')`: whether the
    /// From domain's own hosts handed the message over.
    FromDomainInReceived {
        /// `\bdomain`, case-insensitive: the From address mentions the domain.
        mentions: regex::Regex,
        /// ` rdns=\S*\bdomain [^\]]*by=\S*\bdomain `: a relay of the domain to the domain.
        relayed: regex::Regex,
        /// What the rule asks for.
        desired: bool,
    },
    /// `check_illegal_chars('Header', ratio, count)`.
    IllegalChars {
        /// The header.
        header: String,
        /// Least share of illegal characters.
        ratio: f64,
        /// Least number of illegal characters.
        count: usize,
    },
}

/// ImageInfo's tests; `ty` is `all`, `gif`, `png` or `jpeg`.
#[derive(Debug, Clone)]
pub enum ImageTest {
    /// `image_count(ty, min[, max])`.
    Count {
        /// The image type.
        ty: String,
        /// Least value.
        min: f64,
        /// Greatest value, when given.
        max: Option<f64>,
    },
    /// `pixel_coverage(ty, min[, max])`.
    Pixels {
        /// The image type.
        ty: String,
        /// Least value.
        min: f64,
        /// Greatest value, when given.
        max: Option<f64>,
    },
    /// `image_to_text_ratio(ty, min, max)`: body characters per image pixel.
    TextRatio {
        /// The image type.
        ty: String,
        /// Least value.
        min: f64,
        /// Greatest value (excluded).
        max: f64,
    },
    /// `image_size_exact(ty, height, width)`.
    SizeExact {
        /// The image type.
        ty: String,
        /// Height in pixels.
        height: u64,
        /// Width in pixels.
        width: u64,
    },
    /// `image_size_range(ty, min_height, min_width[, max_height[, max_width]])`.
    SizeRange {
        /// The image type.
        ty: String,
        /// Least (height, width).
        min: (u64, u64),
        /// Greatest height, when given.
        max_h: Option<u64>,
        /// Greatest width, when given.
        max_w: Option<u64>,
    },
    /// `image_named(name)`.
    Named(String),
    /// `image_name_regex(/re/)`.
    NameRegex(std::sync::Arc<pcre2::bytes::Regex>),
}

/// The envelope-sender tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvTest {
    /// The envelope sender is the From address.
    MatchesFrom,
    /// Ratware's `domain.user@` envelope sender built from the recipient.
    Ratware,
    /// From and envelope sender are of different second-level domains.
    DifferentDomains,
    /// The envelope sender's domain is the handing-over relay's.
    MatchesRelay,
}

/// Where a faraway charset is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faraway {
    /// The message's Content-Type charset, with mostly 8-bit body text.
    Body,
    /// Encoded words in From and Subject.
    Headers,
    /// `<meta http-equiv="Content-Type">` charsets of HTML parts.
    Html,
}

/// The part statistics `check_for_mime` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MimeTest {
    /// `mime_base64_count`.
    Base64Count,
    /// `mime_qp_count`.
    QpCount,
    /// `mime_base64_encoded_text`.
    Base64EncodedText,
    /// `mime_attachment`.
    Attachment,
    /// `mime_qp_long_line`.
    QpLongLine,
    /// `mime_bad_iso_charset`.
    BadIsoCharset,
    /// `mime_faraway_charset` (never, with the default `ok_locales all`).
    FarawayCharset,
    /// `mimepart_limit_exceeded` (1000 parts).
    PartLimitExceeded,
}

/// The texts of an HTML part `html_text_match` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlTexts {
    /// Its comments as written (`comment`).
    Comment,
    /// Its titles (`title`).
    Title,
    /// Its links' texts (`anchor`).
    Anchor,
}

/// The flags of an HTML part `html_test` reads (besides `html`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlFlag {
    /// An `object` or `embed` tag.
    Embeds,
    /// A `font` face that is not a list of font names.
    FontFaceBad,
    /// A form posting to a `mailto:` address.
    FormActionMailto,
    /// Text in (nearly) its background's colour.
    FontLowContrast,
    /// Text in a colour that is not one.
    FontInvalidColor,
}

/// The HTML statistics `html_range` and `html_eval` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlValue {
    /// Closing tags with no open one, per tag.
    ClosedExtraRatio,
    /// Tags that are not elements, per tag.
    BadTagRatio,
    /// Distinct non-element names, per distinct name.
    NonElementRatio,
    /// The part's length in characters.
    Length,
    /// Words split by markup, per tag.
    ObfuscationRatio,
    /// Pixels of images with a width and a height.
    ImageArea,
    /// Characters of the rendered text that are not white space.
    NonSpaceLen,
    /// The largest font size set.
    MaxSize,
    /// The smallest font size set.
    MinSize,
}

impl HtmlValue {
    /// The value named as `HTML.pm`'s results name it.
    fn named(name: &str) -> Option<HtmlValue> {
        Some(match name {
            "closed_extra_ratio" => HtmlValue::ClosedExtraRatio,
            "bad_tag_ratio" => HtmlValue::BadTagRatio,
            "non_element_ratio" => HtmlValue::NonElementRatio,
            "length" => HtmlValue::Length,
            "obfuscation_ratio" => HtmlValue::ObfuscationRatio,
            "image_area" => HtmlValue::ImageArea,
            "non_space_len" => HtmlValue::NonSpaceLen,
            "max_size" => HtmlValue::MaxSize,
            "min_size" => HtmlValue::MinSize,
            _ => return None,
        })
    }

    /// Its value for a part of `len` characters with these tags; `None` where `HTML.pm` leaves
    /// it undefined.
    fn of(self, len: usize, t: &super::sa_html::Tags) -> Option<f64> {
        match self {
            HtmlValue::ClosedExtraRatio => t.closed_extra_ratio(),
            HtmlValue::BadTagRatio => t.bad_tag_ratio(),
            HtmlValue::NonElementRatio => t.non_element_ratio(),
            HtmlValue::Length => Some(len as f64),
            HtmlValue::ObfuscationRatio => t.obfuscation_ratio(),
            HtmlValue::ImageArea => Some(t.image_area as f64),
            HtmlValue::NonSpaceLen => Some(t.non_space_len as f64),
            HtmlValue::MaxSize => Some(t.max_size as f64),
            HtmlValue::MinSize => Some(t.min_size as f64),
        }
    }
}

/// A comparison `html_eval` and `html_tag_balance` make.
fn compare<T: PartialOrd>(v: T, op: &str, n: T) -> bool {
    match op {
        "==" => v == n,
        "!=" => v != n,
        "<" => v < n,
        "<=" => v <= n,
        ">" => v > n,
        _ => v >= n,
    }
}

/// `'OP N'` as `html_eval` and `html_tag_balance` take it: the operator and the number.
fn comparison<T: std::str::FromStr>(expr: &str) -> Option<(String, T)> {
    let expr = expr.trim();
    let op: String = expr.chars().take_while(|c| "<>=!".contains(*c)).collect();
    let n = expr[op.len()..].trim().parse().ok()?;
    matches!(op.as_str(), "==" | "!=" | "<" | "<=" | ">" | ">=").then_some((op, n))
}

/// One authentication result an eval rule asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthTest {
    /// The DKIM signatures were read and checked on the whole message (`check_dkim_dependable`:
    /// the gateway verifies what it received, never a truncated copy).
    DkimDependable,
    /// SPF (MAIL FROM) had this outcome.
    Spf(auth::Outcome),
    /// SPF (HELO) had this outcome.
    SpfHelo(auth::Outcome),
    /// The message carries a DKIM signature.
    DkimSigned,
    /// A DKIM signature verified.
    DkimValid,
    /// A DKIM signature of the author domain verified.
    DkimValidAuthor,
    /// DMARC passed.
    DmarcPass,
    /// DMARC failed with this policy.
    DmarcFail(auth::DmarcPolicy),
    /// The author domain has no DMARC record.
    DmarcMissing,
    /// The message carries an ARC set.
    ArcSigned,
    /// The ARC chain verified.
    ArcValid,
}

/// The DKIM plugin's `_check_dkim_welcomelist` for one pair of lists: an author (From)
/// address matching an entry, and a valid signature whose domain the entry accepts: the
/// author's domain (`welcomelist_auth`, or a `welcomelist_from_dkim` entry naming none), the
/// named domain, or with `.domain`/`*.domain` any name under it.
fn dkim_welcomelisted(
    input: &EvalInput<'_>,
    a: &auth::Results,
    dkim: &str,
    auth_list: &str,
) -> bool {
    let lists = input.addr_lists;
    if !lists.has(dkim) && !lists.has(auth_list) {
        return false;
    }
    let valid: Vec<String> = a
        .dkim
        .iter()
        .filter(|s| s.outcome == auth::Outcome::Pass && !s.domain.is_empty())
        .map(|s| s.domain.to_ascii_lowercase())
        .collect();
    if valid.is_empty() {
        return false;
    }
    let Some(from) = header_value(input.headers, "From:addr", None) else {
        return false;
    };
    let from = utf8_lossy(&from).to_lowercase();
    from.split('\n').filter(|x| !x.is_empty()).any(|author| {
        let author_domain = author.rsplit_once('@').map_or("", |(_, d)| d);
        let accepts = |sdid: &str, accepted: &str| -> bool {
            let accepted = accepted.rsplit_once('@').map_or(accepted, |(_, d)| d);
            if accepted.is_empty() {
                return sdid == author_domain;
            }
            match accepted
                .strip_prefix("*.")
                .or_else(|| accepted.strip_prefix('.'))
            {
                Some(parent) => sdid.ends_with(&format!(".{parent}")),
                None => sdid == accepted,
            }
        };
        let by_auth = lists.contains(auth_list, author) && valid.iter().any(|d| d == author_domain);
        by_auth
            || lists
                .dkim_domains(dkim, author)
                .any(|acc| valid.iter().any(|d| accepts(d, acc)))
    })
}

/// HeaderEval's `_check_recipients`: the To/Cc addresses (Bcc's too while fewer than five),
/// neighbours that differ only in case taken once, at most 256; (sorted: seven or more in
/// byte order, similarity: the share of address pairs with the same first two characters of
/// the user, plus pairs of different hosts with the same first two characters of the host).
fn recipients(h: &Headers) -> (bool, f64) {
    let mut inputs: Vec<String> = Vec::new();
    for req in ["ToCc:addr", "Bcc:addr"] {
        inputs.extend(addresses(h, req, None));
        if inputs.len() >= 5 {
            break;
        }
    }
    let mut address: Vec<String> = Vec::new();
    let mut previous = String::new();
    for current in inputs {
        // Perl's `while (my $current = shift @inputs)` ends at a false value.
        if current == "0" {
            break;
        }
        if current.to_lowercase() != previous.to_lowercase() {
            previous = current.clone();
            address.push(current);
        }
        if address.len() == 256 {
            break;
        }
    }
    let sorted = address.len() >= 7 && {
        let mut s = address.clone();
        s.sort();
        s == address
    };
    let mut similar = 0.0;
    if address.len() >= 5 {
        let first2 = |s: &str| s.chars().take(2).collect::<String>();
        let user: Vec<String> = address.iter().map(|a| first2(a)).collect();
        // `map { m/\@(.*)/ }` drops addresses without an `@`, so later ones shift down.
        let fqhn: Vec<&str> = address
            .iter()
            .filter_map(|a| a.split_once('@').map(|(_, h)| h))
            .collect();
        let host: Vec<String> = fqhn.iter().map(|h| first2(h)).collect();
        let (mut hits, mut combinations) = (0u32, 0u32);
        for i in 0..address.len() {
            for j in i + 1..address.len() {
                if user[i] == user[j] {
                    hits += 1;
                }
                let hi = host.get(i).map_or("", String::as_str);
                let hj = host.get(j).map_or("", String::as_str);
                let fi = fqhn.get(i).copied().unwrap_or("");
                let fj = fqhn.get(j).copied().unwrap_or("");
                if hi == hj && fi != fj {
                    hits += 1;
                }
                combinations += 1;
            }
        }
        similar = f64::from(hits) / f64::from(combinations);
    }
    (sorted, similar)
}

/// A header line holding `%[A-Z][A-Z_-]` outside the fields where such text is normal.
fn unresolved_template(h: &Headers) -> bool {
    static EXEMPT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)^(?:X-VMS-To|X-UIDL|X-Face|To|Cc|From|Subject|References|In-Reply-To|(?:X-|Resent-|X-Original-)?Message-Id):",
        )
        .expect("valid")
    });
    // No `%` in any field's name or value: nothing to look for (most mail), without
    // building the whole header.
    let percent = |b: &[u8]| memchr::memchr(b'%', b).is_some();
    if !h
        .fields
        .iter()
        .any(|(name, value, _)| percent(name.as_bytes()) || percent(value))
    {
        return false;
    }
    let Some(all) = header_value(h, "ALL", None) else {
        return false;
    };
    let all = utf8_lossy(&all);
    all.split('\n').any(|line| {
        let b = line.as_bytes();
        b.windows(3).any(|w| {
            w[0] == b'%'
                && w[1].is_ascii_uppercase()
                && (w[2].is_ascii_uppercase() || w[2] == b'_' || w[2] == b'-')
        }) && !EXEMPT.is_match(line)
    })
}

/// `<[A-Z]{28}\.(.+?)>` in the Message-ID, and `"name" <that>` in From.
fn ratware_name_id(h: &Headers) -> bool {
    let Some(mid) = header_value(h, "MESSAGEID", None) else {
        return false;
    };
    let mid = utf8_lossy(&mid);
    let Some(right) = ratware_id_right(&mid) else {
        return false;
    };
    let Some(from) = header_value(h, "From", None) else {
        return false;
    };
    quoted_name_before(&utf8_lossy(&from), right)
}

/// The group of `<[A-Z]{28}\.([^>]+?)>`'s leftmost match.
fn ratware_id_right(mid: &str) -> Option<&str> {
    let b = mid.as_bytes();
    for i in memchr::memchr_iter(b'<', b) {
        let Some(caps) = b.get(i + 1..i + 29) else {
            return None; // later starts have even less room
        };
        if !caps.iter().all(u8::is_ascii_uppercase) || b.get(i + 29) != Some(&b'.') {
            continue;
        }
        let start = i + 30;
        match memchr::memchr(b'>', &b[start..]) {
            Some(n) if n > 0 => return Some(&mid[start..start + n]),
            _ => {}
        }
    }
    None
}

/// Whether `"[^"]+"\s*<ADDR>` matches `from` (`ADDR` taken literally).
fn quoted_name_before(from: &str, addr: &str) -> bool {
    let needle = format!("<{addr}>");
    let mut at = 0;
    while let Some(p) = from[at..].find(&needle).map(|p| p + at) {
        let before = from[..p].trim_end_matches(char::is_whitespace);
        if let Some(name) = before.strip_suffix('"') {
            if name.rfind('"').is_some_and(|q| q + 1 < name.len()) {
                return true;
            }
        }
        at = p + 1;
    }
    false
}

/// The message's sender addresses as the list rules read them, computed once.
fn senders<'a>(input: &'a EvalInput<'_>) -> &'a [String] {
    input.senders.get_or_init(|| from_addrs(input))
}

/// The message's recipient addresses as the list rules read them, computed once.
fn recipient_addrs<'a>(input: &'a EvalInput<'_>) -> &'a [String] {
    input.recipients.get_or_init(|| to_addrs(input.headers))
}

/// The rendered body paragraphs, the Subject first, as body rules read them (the engine's
/// when it made them, else made here once).
fn body_of<'a>(input: &'a EvalInput<'_>) -> &'a [Vec<u8>] {
    input.body.get_or_init(|| {
        let subject = input.headers.values("subject", false).last();
        super::view::body_lines(input.msg, subject, input.extracted_text)
    })
}

/// `check_welcomelist_bounce_relays`: a host name of `welcomelist_bounce_relays` in a
/// `Received:` line the message quotes, in the rendered body's paragraphs (` host.name `) or in
/// the body as received (a bounced message attached, its folded fields unfolded).
fn own_relay_quoted(input: &EvalInput<'_>) -> bool {
    use std::sync::OnceLock;
    static RE: OnceLock<[regex::Regex; 3]> = OnceLock::new();
    let [received, spaced, blank_around] = RE.get_or_init(|| {
        [
            r"(?i)^[> ]*Received:",
            r" (\S+\.\S+) ",
            r"(?s)\s(\S+\.\S+)\s",
        ]
        .map(|p| regex::Regex::new(p).expect("a valid pattern"))
    });
    let listed = |host: &str| input.addr_lists.contains("welcomelist_bounce_relays", host);
    let lines = body_of(input);
    for l in lines {
        let l = utf8_lossy(l);
        if received.is_match(&l) && spaced.captures_iter(&l).any(|c| listed(&c[1])) {
            return true;
        }
    }
    let Some(top) = input.msg.parts.first() else {
        return false;
    };
    let pristine = &input.msg.raw[top.body.start as usize..top.body.end as usize];
    if !pristine
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"received:"))
    {
        return false;
    }
    let pristine = utf8_lossy(pristine);
    let mut found_received = false;
    let mut field = String::new();
    for line in pristine.split('\n') {
        if !found_received {
            if !received.is_match(line) {
                continue;
            }
            found_received = true;
        }
        if line.starts_with(|c: char| c.is_whitespace()) {
            field.push_str(line);
        } else {
            field.clear();
            field.push_str(line);
        }
        if received.is_match(&field) && blank_around.captures_iter(&field).any(|c| listed(&c[1])) {
            return true;
        }
    }
    false
}

/// `_check_from_in_welcomelist` (or, with `def`, `_check_from_in_default_welcomelist`): 1 when
/// a sender is welcome, -1 when one is on the relay-checked list but came through another relay
/// (a forgery, unless `welcomelist_allows_relays` names it), 0 otherwise.
fn welcomelisted(input: &EvalInput<'_>, def: bool) -> i8 {
    let lists = input.addr_lists;
    let (plain, rcvd) = if def {
        (None, lists.rcvd("def_welcomelist_from_rcvd"))
    } else {
        (
            Some("welcomelist_from"),
            lists.rcvd("welcomelist_from_rcvd"),
        )
    };
    let plain = plain.filter(|p| lists.has(p));
    if plain.is_none() && rcvd.is_empty() {
        return 0;
    }
    let mut found = 0;
    for a in senders(input) {
        if plain.is_some_and(|p| lists.contains(p, a)) {
            return 1;
        }
        match relayed_as_listed(input, rcvd, a) {
            1 => return 1,
            -1 => found = -1,
            _ => {}
        }
    }
    found
}

/// `_check_welcomelist_rcvd`: whether `addr` matches an entry and the relay that handed the
/// message over (the first untrusted one; the trusted ones when all are trusted) matches one
/// of the entry's relays (1), matches an entry only (-1, 0 when `welcomelist_allows_relays`
/// names it), or neither (0).
fn relayed_as_listed(input: &EvalInput<'_>, list: &[super::load::RcvdEntry], addr: &str) -> i8 {
    let r = input.relays;
    let relays: &[super::relays::Relay] = if !r.untrusted.is_empty() {
        &r.untrusted[..1]
    } else {
        &r.trusted
    };
    if relays.is_empty() {
        return 0;
    }
    let addr = addr.to_lowercase();
    let mut forged = 0;
    for e in list.iter().filter(|e| e.pattern.is_match(&addr)) {
        for want in &e.relays {
            if relays.iter().any(|relay| relay_matches(want, relay)) {
                return 1;
            }
            forged = -1;
        }
    }
    if forged != 0
        && input
            .addr_lists
            .contains("welcomelist_allows_relays", &addr)
    {
        forged = 0;
    }
    forged
}

/// Whether a relay is the one a `welcomelist_from_rcvd` entry names: `[ADDRESS]` (exact for a
/// full IPv4 address, a prefix for a classful one, else a network with an optional `/len`
/// inside or after the brackets), or a name its reverse DNS is or ends in.
fn relay_matches(want: &str, relay: &super::relays::Relay) -> bool {
    let bracketed = want.strip_prefix('[').and_then(|w| {
        let (inside, after) = w.rsplit_once(']')?;
        let len_ok = after.is_empty()
            || after.strip_prefix('/').is_some_and(|l| {
                (1..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_digit())
            });
        len_ok.then(|| format!("{inside}{after}"))
    });
    let Some(net) = bracketed else {
        let rdns = relay.lc_rdns();
        return rdns == want
            || rdns
                .strip_suffix(want)
                .is_some_and(|head| head.ends_with('.'));
    };
    let ip = relay.ip.as_str();
    if ip.is_empty() {
        return false;
    }
    let dotted = |s: &str, parts: usize| {
        let p: Vec<&str> = s.split('.').collect();
        p.len() == parts
            && p.iter()
                .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
    };
    if dotted(&net, 4) {
        return net == ip;
    }
    if !net.is_empty() && net.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // A classful subnet: `10.1` is every address starting `10.1.`.
        let prefix = format!("{}.", net.trim_end_matches('.'));
        return ip.starts_with(&prefix);
    }
    let (Some(net), Ok(ip)) = (crate::greylist::parse_network(&net), ip.parse()) else {
        return false;
    };
    crate::greylist::in_network(ip, net)
}

/// `all_from_addrs`: the first Resent-From's addresses when there is one, else those of
/// From, Envelope-Sender, Resent-Sender, X-Envelope-From and the envelope sender; runs of dots
/// squeezed, each once.
fn from_addrs(input: &EvalInput<'_>) -> Vec<String> {
    let get = |req: &str| addresses(input.headers, req, input.mail_from);
    let mut addrs = get("Resent-From:first:addr");
    if addrs.is_empty() {
        for req in [
            "From:addr",
            "Envelope-Sender:addr",
            "Resent-Sender:addr",
            "X-Envelope-From:addr",
            "EnvelopeFrom:addr",
        ] {
            addrs.extend(get(req));
        }
    }
    let mut out: Vec<String> = Vec::new();
    for a in addrs {
        let mut squeezed = String::with_capacity(a.len());
        for c in a.chars() {
            if !(c == '.' && squeezed.ends_with('.')) {
                squeezed.push(c);
            }
        }
        if !out.contains(&squeezed) {
            out.push(squeezed);
        }
    }
    out
}

/// `all_to_addrs`: the first Resent-To's and Resent-Cc's addresses when there are any, else
/// the `for <addr>` of the newest three Received fields and the addresses of To, Apparently-To,
/// Delivered-To, Envelope-Recipients, Apparently-Resent-To, X-Envelope-To, Envelope-To,
/// X-Delivered-To, X-Original-To, X-Rcpt-To, X-Real-To and Cc; each once.
fn to_addrs(h: &Headers) -> Vec<String> {
    let get = |req: &str| addresses(h, req, None);
    let mut addrs = get("Resent-To:first:addr");
    addrs.extend(get("Resent-Cc:first:addr"));
    if addrs.is_empty() {
        for v in h.values("received", false).take(3) {
            let v = utf8_lossy(v);
            // ` for <?(\S+\@(\S+?))>?;` with a valid domain.
            if let Some(p) = v.find(" for ") {
                let rest = &v[p + 5..];
                if let Some(end) = rest.find(';') {
                    let cand = rest[..end].trim_start_matches('<').trim_end_matches('>');
                    let ok = !cand.contains(char::is_whitespace)
                        && cand.split_once('@').is_some_and(|(u, d)| {
                            !u.is_empty() && d.contains('.') && !d.contains('@')
                        });
                    if ok {
                        addrs.push(cand.to_string());
                    }
                }
            }
        }
        for req in [
            "To:addr",
            "Apparently-To:addr",
            "Delivered-To:addr",
            "Envelope-Recipients:addr",
            "Apparently-Resent-To:addr",
            "X-Envelope-To:addr",
            "Envelope-To:addr",
            "X-Delivered-To:addr",
            "X-Original-To:addr",
            "X-Rcpt-To:addr",
            "X-Real-To:addr",
            "Cc:addr",
        ] {
            addrs.extend(get(req));
        }
    }
    let mut out: Vec<String> = Vec::new();
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// A URI host as the host-list rules look it up.
pub struct ListedHost {
    host: String,
    ip: bool,
}

impl ListedHost {
    /// The names it is looked up under, most specific first, as `check_uri_host_listed` tries
    /// them: an IP address alone; a name and its parent domains, of which SpamAssassin keeps
    /// the eleven most general.
    fn names(&self) -> impl Iterator<Item = &str> {
        let h = self.host.as_str();
        let labels = if self.ip {
            1
        } else {
            h.matches('.').count() + 1
        };
        std::iter::once(0)
            .chain(h.match_indices('.').map(|(i, _)| i + 1))
            .take(labels)
            .skip(labels.saturating_sub(11))
            .map(move |i| &h[i..])
    }
}

/// The message's distinct URI hosts (not of `mailto:`) as the host-list rules look them up,
/// once a message: every host-list rule reads them. Names without a registrable domain under a
/// known public suffix are left out, as SpamAssassin's `uri_to_domain` gives them no host.
fn listed_hosts(uris: &[Vec<u8>]) -> Vec<ListedHost> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for u in uris {
        if u.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"mailto:"))
        {
            continue;
        }
        let u = utf8_lossy(u);
        if !u.contains("://") {
            continue;
        }
        let Some(host) = lists::uri_host(&u) else {
            continue;
        };
        let ip = host.parse::<IpAddr>().is_ok();
        // A name is a host when it has a registrable domain under a known suffix: not a bare
        // suffix (`<a href="top">` lists `http://top`, which `uri_to_domain` gives no domain).
        if !ip && !psl::domain(host.as_bytes()).is_some_and(|d| d.suffix().is_known()) {
            continue;
        }
        if seen.insert(host.clone()) {
            out.push(ListedHost { host, ip });
        }
    }
    out
}

/// Whether a URI host of the message, or a parent domain of it, is on a host list with a
/// positive verdict: the most specific listed name decides (`!host` exempts), as
/// `check_uri_host_listed` does.
fn uri_host_listed(hosts: &[ListedHost], list: &HashMap<String, bool>) -> bool {
    hosts
        .iter()
        .any(|h| h.names().find_map(|n| list.get(n)).copied() == Some(true))
}

/// `zone A [subtest]` of the URI list definitions (`urirhssub`, `uridnssub`, ...); TXT lists
/// are rare and not read here.
fn zone_a_subtest(arg_text: &str) -> Option<(String, Subtest)> {
    let mut w = arg_text.split_whitespace();
    let zone = w.next()?.trim_end_matches('.').to_string();
    if !w.next()?.eq_ignore_ascii_case("A") {
        return None;
    }
    let subtest = match w.next() {
        Some(s) => Subtest::parse(s)?,
        None => Subtest::Any,
    };
    Some((zone, subtest))
}

/// A bound written as a number or `undef` (none); `None` when it is neither.
fn undef_or(v: &str) -> Option<Option<f64>> {
    if v == "undef" {
        Some(None)
    } else {
        v.parse().ok().map(Some)
    }
}

/// The addresses of a header request (`From:addr`, `Cc:addr`, ...), each once per line of
/// the joined value.
fn addresses(h: &Headers, req: &str, env_from: Option<&str>) -> Vec<String> {
    header_value(h, req, env_from)
        .map(|v| {
            utf8_lossy(&v)
                .split('\n')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Splits `'a', 'b', 3` into its arguments, unquoted.
fn args(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            (_, c) => cur.push(c),
        }
    }
    if !cur.trim().is_empty() || !out.is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

impl Call {
    /// The call for an eval rule (`function`, `args` as the rule wrote them), with the DNS
    /// plugins' definitions for `check_uridnsbl`; `None` when it is not implemented.
    pub fn parse(
        function: &str,
        arg_text: &str,
        net_defs: &HashMap<String, super::Eval>,
    ) -> Option<Call> {
        use auth::Outcome as O;
        let a = args(arg_text);
        let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
        let spf = |o| Some(Call::Auth(AuthTest::Spf(o)));
        let helo = |o| Some(Call::Auth(AuthTest::SpfHelo(o)));
        match function {
            "check_rbl" | "check_rbl_txt" => Some(Call::Rbl {
                set: arg(0).to_string(),
                zone: arg(1).trim_end_matches('.').to_string(),
                subtest: if a.len() > 2 {
                    Subtest::parse(arg(2))?
                } else {
                    Subtest::Any
                },
                txt: function == "check_rbl_txt",
            }),
            "check_rbl_sub" => Some(Call::RblSub {
                set: arg(0).to_string(),
                subtest: Subtest::parse(arg(1))?,
            }),
            "check_uridnsbl" => {
                let def = net_defs.get(arg(0))?;
                Call::parse(&def.function, &def.args, net_defs)
            }
            "uridnssub" | "uridnsbl" => {
                // Whether the domain's own A records or its name servers' are meant is the
                // rule's tflags `a` (set by the engine).
                let (zone, subtest) = zone_a_subtest(arg_text)?;
                Some(Call::UriIp {
                    zone,
                    subtest,
                    a_records: false,
                })
            }
            "urirhssub" | "urirhsbl" => {
                let (zone, subtest) = zone_a_subtest(arg_text)?;
                Some(Call::UriBl { zone, subtest })
            }
            "askdns" => {
                let mut w = arg_text.split_whitespace();
                let template = w.next()?.trim_end_matches('.').to_string();
                let txt = match w.next()? {
                    t if t.eq_ignore_ascii_case("A") => false,
                    t if t.eq_ignore_ascii_case("TXT") => true,
                    _ => return None,
                };
                let rest: Vec<&str> = w.collect();
                let sub = rest.join(" ");
                let re = sub.strip_prefix('/')?.strip_suffix('/')?;
                Some(Call::AskDns {
                    template,
                    txt,
                    answer: regex::Regex::new(re).ok()?,
                })
            }
            "check_for_spf_pass" => spf(O::Pass),
            "check_for_spf_neutral" => spf(O::Neutral),
            "check_for_spf_none" => spf(O::None),
            "check_for_spf_fail" => spf(O::Fail),
            "check_for_spf_softfail" => spf(O::SoftFail),
            "check_for_spf_permerror" => spf(O::PermError),
            "check_for_spf_temperror" => spf(O::TempError),
            "check_for_spf_helo_pass" => helo(O::Pass),
            "check_for_spf_helo_neutral" => helo(O::Neutral),
            "check_for_spf_helo_none" => helo(O::None),
            "check_for_spf_helo_fail" => helo(O::Fail),
            "check_for_spf_helo_softfail" => helo(O::SoftFail),
            "check_for_spf_helo_permerror" => helo(O::PermError),
            "check_for_spf_helo_temperror" => helo(O::TempError),
            "check_dkim_signed" if a.is_empty() => Some(Call::Auth(AuthTest::DkimSigned)),
            "check_dkim_valid" if a.is_empty() => Some(Call::Auth(AuthTest::DkimValid)),
            "check_dkim_signed" | "check_dkim_valid" => Some(Call::DkimSignedBy {
                valid: function == "check_dkim_valid",
                domains: a.iter().map(|d| d.trim().to_string()).collect(),
            }),
            "check_dkim_dependable" => Some(Call::Auth(AuthTest::DkimDependable)),
            "check_dkim_valid_envelopefrom" => Some(Call::DkimValidEnvelopeFrom),
            "check_dkim_valid_author_sig" if a.is_empty() => {
                Some(Call::Auth(AuthTest::DkimValidAuthor))
            }
            "check_dmarc_pass" => Some(Call::Auth(AuthTest::DmarcPass)),
            "check_dmarc_reject" => {
                Some(Call::Auth(AuthTest::DmarcFail(auth::DmarcPolicy::Reject)))
            }
            "check_dmarc_quarantine" => Some(Call::Auth(AuthTest::DmarcFail(
                auth::DmarcPolicy::Quarantine,
            ))),
            "check_dmarc_none" => Some(Call::Auth(AuthTest::DmarcFail(auth::DmarcPolicy::None))),
            "check_dmarc_missing" => Some(Call::Auth(AuthTest::DmarcMissing)),
            "check_arc_signed" => Some(Call::Auth(AuthTest::ArcSigned)),
            "check_arc_valid" => Some(Call::Auth(AuthTest::ArcValid)),
            "check_for_missing_to_header" => Some(Call::MissingTo),
            "check_from_in_welcomelist" | "check_from_in_whitelist" => {
                Some(Call::FromInWelcomelist { def: false })
            }
            "have_any_bounce_relays" => Some(Call::BounceRelays { found: false }),
            "check_welcomelist_bounce_relays" | "check_whitelist_bounce_relays" => {
                Some(Call::BounceRelays { found: true })
            }
            "check_from_in_default_welcomelist" | "check_from_in_default_whitelist" => {
                Some(Call::FromInWelcomelist { def: true })
            }
            "check_forged_in_welcomelist" | "check_forged_in_whitelist" => {
                Some(Call::ForgedInWelcomelist { def: false })
            }
            "check_forged_in_default_welcomelist" | "check_forged_in_default_whitelist" => {
                Some(Call::ForgedInWelcomelist { def: true })
            }
            "check_from_in_blocklist" | "check_from_in_blacklist" => {
                Some(Call::FromInList("blocklist_from".into()))
            }
            "check_from_in_list" => Some(Call::FromInList(arg(0).to_string())),
            "check_to_in_welcomelist" | "check_to_in_whitelist" => {
                Some(Call::ToInList("welcomelist_to".into()))
            }
            "check_to_in_more_spam" => Some(Call::ToInList("more_spam_to".into())),
            "check_to_in_all_spam" => Some(Call::ToInList("all_spam_to".into())),
            "check_to_in_blocklist" | "check_to_in_blacklist" => {
                Some(Call::ToInList("blocklist_to".into()))
            }
            "check_to_in_list" => Some(Call::ToInList(arg(0).to_string())),
            "check_replyto_in_list" => Some(Call::ReplyToInList(arg(0).to_string())),
            "check_for_spf_welcomelist_from" | "check_for_spf_whitelist_from" => {
                Some(Call::SpfWelcomelist { def: false })
            }
            "check_for_def_spf_welcomelist_from" | "check_for_def_spf_whitelist_from" => {
                Some(Call::SpfWelcomelist { def: true })
            }
            "check_for_dkim_welcomelist_from" | "check_for_dkim_whitelist_from" => {
                Some(Call::DkimWelcomelist { def: false })
            }
            "check_for_def_dkim_welcomelist_from" | "check_for_def_dkim_whitelist_from" => {
                Some(Call::DkimWelcomelist { def: true })
            }
            "check_subject_in_welcomelist" | "check_subject_in_whitelist" => {
                Some(Call::SubjectInList("welcomelist_subject".into()))
            }
            "check_subject_in_blocklist" | "check_subject_in_blacklist" => {
                Some(Call::SubjectInList("blocklist_subject".into()))
            }
            "check_uri_host_in_blocklist" | "check_uri_host_in_blacklist" => {
                Some(Call::UriHostListed("BLOCK".into()))
            }
            "check_uri_host_in_welcomelist" | "check_uri_host_in_whitelist" => {
                Some(Call::UriHostListed("WELCOME".into()))
            }
            "check_uri_host_listed" => Some(Call::UriHostListed(arg(0).to_string())),
            "subject_is_all_caps" => Some(Call::SubjectAllCaps),
            "check_for_to_in_subject" => Some(Call::ToInSubject {
                user: arg(0) == "user",
            }),
            "check_for_shifted_date" => Some(Call::ShiftedDate {
                min: undef_or(arg(0))?,
                max: undef_or(arg(1))?,
            }),
            "check_for_mime" => Some(Call::Mime(match arg(0) {
                "mime_base64_count" => MimeTest::Base64Count,
                "mime_qp_count" => MimeTest::QpCount,
                "mime_base64_encoded_text" => MimeTest::Base64EncodedText,
                "mime_attachment" => MimeTest::Attachment,
                "mime_qp_long_line" => MimeTest::QpLongLine,
                "mime_bad_iso_charset" => MimeTest::BadIsoCharset,
                "mime_faraway_charset" => MimeTest::FarawayCharset,
                "mimepart_limit_exceeded" => MimeTest::PartLimitExceeded,
                _ => return None,
            })),
            "check_msg_parse_flags" => {
                // `($type, $type2)`: the second when the first is a reference (never, written
                // in a rule).
                let flag = arg(0).to_string();
                super::sa_parse::ParseFlags::default().get(&flag)?;
                Some(Call::ParseFlag(flag))
            }
            "check_uri_truncated" => Some(Call::UriTruncated),
            "check_https_http_mismatch" => {
                // `$minanchors ||= 1`: Perl's falsy values (empty, `0`) give one.
                let min = arg(0).trim().parse::<usize>().unwrap_or(0).max(1);
                let max = match a.get(1).map(|m| m.trim()) {
                    None => None,
                    Some(m) => Some(m.parse().ok()?),
                };
                Some(Call::HttpsHttpMismatch { min, max })
            }
            "check_https_ip_mismatch" => Some(Call::HttpsIpMismatch),
            "check_iframe_src" => Some(Call::IframeSrc),
            "check_blank_line_ratio" => Some(Call::BlankLineRatio {
                min: arg(0).trim().parse().ok()?,
                max: arg(1).trim().parse().ok()?,
                // `$minlines = 1 if !defined $minlines || $minlines < 1`.
                min_lines: arg(2).trim().parse::<usize>().unwrap_or(0).max(1),
            }),
            "check_stock_info" => Some(Call::StockInfo(arg(0).trim().parse().ok()?)),
            "check_for_mime_html" => Some(Call::MimeHtml),
            "check_for_mime_html_only" => Some(Call::MimeHtmlOnly),
            "check_mime_multipart_ratio" => Some(Call::MultipartRatio {
                min: arg(0).parse().ok()?,
                max: arg(1).parse().ok()?,
            }),
            "check_ma_non_text" => Some(Call::MaNonText),
            "check_outlook_message_id" => Some(Call::OutlookMessageId),
            "tvd_vertical_words" => {
                let max: f64 = arg(1).trim().parse().ok()?;
                Some(Call::VerticalWords {
                    min: arg(0).trim().parse().ok()?,
                    max: if max >= 100.0 { 101.0 } else { max },
                })
            }
            "check_for_uppercase" => Some(Call::Uppercase {
                min: arg(0).parse().ok()?,
                max: arg(1).parse().ok()?,
            }),
            "check_body_length" => Some(Call::BodyLength(arg(0).parse().ok()?)),
            "html_test" if arg(0) == "html" => Some(Call::HtmlMessage),
            "check_for_forged_gmail_received_headers" => Some(Call::ForgedGmail),
            "html_tag_exists" => Some(Call::HtmlTagExists(arg(0).to_ascii_lowercase())),
            "image_count"
            | "pixel_coverage"
            | "image_to_text_ratio"
            | "image_size_exact"
            | "image_size_range"
            | "image_named"
            | "image_name_regex" => {
                let ty = arg(0).to_string();
                let num = |i: usize| a.get(i).and_then(|v| v.trim().parse::<f64>().ok());
                let int = |i: usize| a.get(i).and_then(|v| v.trim().parse::<u64>().ok());
                Some(Call::Image(match function {
                    "image_count" => ImageTest::Count {
                        ty,
                        min: num(1)?,
                        max: num(2),
                    },
                    "pixel_coverage" => ImageTest::Pixels {
                        ty,
                        min: num(1)?,
                        max: num(2),
                    },
                    "image_to_text_ratio" => ImageTest::TextRatio {
                        ty,
                        min: num(1)?,
                        max: num(2)?,
                    },
                    "image_size_exact" => ImageTest::SizeExact {
                        ty,
                        height: int(1)?,
                        width: int(2)?,
                    },
                    "image_size_range" => ImageTest::SizeRange {
                        ty,
                        min: (int(1)?, int(2)?),
                        max_h: int(3),
                        max_w: int(4),
                    },
                    "image_named" => ImageTest::Named(ty),
                    _ => {
                        // `/re/` as the rule wrote it (commas and all), or a quoted pattern.
                        let raw = arg_text.trim();
                        let re = raw
                            .strip_prefix('/')
                            .and_then(|r| r.strip_suffix('/'))
                            .unwrap_or(&ty);
                        let re = pcre2::bytes::RegexBuilder::new()
                            .jit_if_available(true)
                            .build(re)
                            .ok()?;
                        ImageTest::NameRegex(std::sync::Arc::new(re))
                    }
                }))
            }
            "html_text_match" => {
                let texts = match arg(0) {
                    "comment" => HtmlTexts::Comment,
                    "title" => HtmlTexts::Title,
                    "anchor" => HtmlTexts::Anchor,
                    _ => return None,
                };
                let pattern = pcre2::bytes::RegexBuilder::new()
                    .jit_if_available(true)
                    .build(arg(1))
                    .ok()?;
                Some(Call::HtmlTextMatch {
                    texts,
                    pattern: std::sync::Arc::new(pattern),
                })
            }
            "html_test" => Some(Call::HtmlTest(match arg(0) {
                "embeds" => HtmlFlag::Embeds,
                "font_face_bad" => HtmlFlag::FontFaceBad,
                "form_action_mailto" => HtmlFlag::FormActionMailto,
                "font_low_contrast" => HtmlFlag::FontLowContrast,
                "font_invalid_color" => HtmlFlag::FontInvalidColor,
                _ => return None,
            })),
            "html_eval" => {
                let test = HtmlValue::named(arg(0))?;
                // `^[<>=!\-+ 0-9]+$`, evaluated as Perl code after the value: the comparisons
                // of one number are what rules write.
                let (op, n) = comparison(arg(1))?;
                Some(Call::HtmlEval { test, op, n })
            }
            "html_title_subject_ratio" => {
                Some(Call::HtmlTitleSubjectRatio(arg(0).trim().parse().ok()?))
            }
            "html_image_ratio" => Some(Call::HtmlImageRatio {
                min: arg(0).trim().parse().ok()?,
                max: arg(1).trim().parse().ok()?,
            }),
            "html_tag_balance" => {
                let (op, n) = comparison(arg(1))?;
                Some(Call::HtmlTagBalance {
                    tag: arg(0).to_ascii_lowercase(),
                    op,
                    n,
                })
            }
            "html_range" => Some(Call::HtmlRange {
                test: HtmlValue::named(arg(0))?,
                min: arg(1).parse().ok()?,
                max: if arg(2) == "inf" || a.len() < 3 {
                    None
                } else {
                    Some(arg(2).parse().ok()?)
                },
            }),
            "html_image_only" => Some(Call::HtmlImageOnly {
                min: arg(0).parse().ok()?,
                max: arg(1).parse().ok()?,
            }),
            "check_header_count_range" => Some(Call::HeaderCount {
                header: arg(0).to_string(),
                min: arg(1).parse().ok()?,
                max: arg(2).parse().ok()?,
            }),
            "check_for_ascii_text_illegal" => Some(Call::AsciiTextIllegal),
            "sorted_recipients" => Some(Call::SortedRecipients),
            "similar_recipients" => Some(Call::SimilarRecipients {
                min: undef_or(arg(0))?,
                max: undef_or(arg(1))?,
            }),
            "check_unresolved_template" => Some(Call::UnresolvedTemplate),
            "check_ratware_name_id" => Some(Call::RatwareNameId),
            "check_freemail_header" => Some(Call::FreemailHeader {
                header: arg(0).to_string(),
                pattern: match a.get(1) {
                    Some(p) => Some(regex::Regex::new(p).ok()?),
                    None => None,
                },
            }),
            "check_freemail_from" => Some(Call::FreemailFrom(match a.first() {
                Some(p) => Some(regex::Regex::new(p).ok()?),
                None => None,
            })),
            "check_freemail_replyto" => match a.first().map(String::as_str) {
                None | Some("replyto") => Some(Call::FreemailReplyto(false)),
                Some("reply") => Some(Call::FreemailReplyto(true)),
                Some(_) => None,
            },
            "multipart_alternative_difference" => Some(Call::MpartAltDiff {
                min: arg(0).parse().ok()?,
                max: undef_or(arg(1))?,
            }),
            "multipart_alternative_difference_count" => Some(Call::MpartAltDiffCount {
                ratio: arg(0).parse().ok()?,
                min_html: arg(1).parse().ok()?,
            }),
            "check_abundant_unicode_ratio" => {
                // MIMEEval only takes `\d{0,3}\.\d{1,3}`.
                let r = arg(0);
                let (i, f) = r.split_once('.')?;
                (i.len() <= 3
                    && (1..=3).contains(&f.len())
                    && i.bytes().chain(f.bytes()).all(|b| b.is_ascii_digit()))
                .then(|| r.parse().ok().map(Call::UnicodeRatio))
                .flatten()
            }
            "check_mime_anomaly" => Some(Call::MimeAnomaly(arg(0).to_ascii_uppercase())),
            "check_base64_length" => Some(Call::Base64Length {
                min: arg(0).parse().ok()?,
                max: if a.len() > 1 {
                    Some(arg(1).parse().ok()?)
                } else {
                    None
                },
            }),
            "check_for_matching_env_and_hdr_from" => Some(Call::Envelope(EnvTest::MatchesFrom)),
            "check_ratware_envelope_from" => Some(Call::Envelope(EnvTest::Ratware)),
            "check_equal_from_domains" => Some(Call::Envelope(EnvTest::DifferentDomains)),
            "check_mailfrom_matches_rcvd" => Some(Call::Envelope(EnvTest::MatchesRelay)),
            "check_for_faraway_charset" => Some(Call::Faraway(Faraway::Body)),
            "check_for_faraway_charset_in_headers" => Some(Call::Faraway(Faraway::Headers)),
            "html_charset_faraway" => Some(Call::Faraway(Faraway::Html)),
            "check_for_from_domain_in_received_headers" => {
                let d = regex::escape(arg(0));
                Some(Call::FromDomainInReceived {
                    mentions: regex::RegexBuilder::new(&format!(r"\b{d}"))
                        .case_insensitive(true)
                        .build()
                        .ok()?,
                    relayed: regex::Regex::new(&format!(r" rdns=\S*\b{d} [^\]]*by=\S*\b{d} "))
                        .ok()?,
                    desired: arg(1) == "true",
                })
            }
            f if super::relays::Test::of(f).is_some() => {
                super::relays::Test::of(f).map(Call::Relay)
            }
            "check_illegal_chars" => Some(Call::IllegalChars {
                header: arg(0).to_string(),
                ratio: arg(1).parse().ok()?,
                count: arg(2).parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Whether the call needs network facts.
    pub fn is_net(&self) -> bool {
        matches!(
            self,
            Call::Rbl { .. }
                | Call::RblSub { .. }
                | Call::UriBl { .. }
                | Call::UriIp { .. }
                | Call::AskDns { .. }
                | Call::Auth(_)
                | Call::DkimSignedBy { .. }
                | Call::SpfWelcomelist { .. }
                | Call::DkimWelcomelist { .. }
        )
    }
}

/// The lookups a ruleset's network rules ask for.
#[derive(Debug, Clone, Default)]
pub struct DnsPlan {
    /// Client address lists: (set, zone, TXT?, last external relay only?).
    pub ip: Vec<(String, String, bool, bool)>,
    /// URI domain lists (zones).
    pub uri: Vec<String>,
    /// Address lists for the addresses behind URI domains: (zone, own A records rather than the
    /// name servers').
    pub uri_ip: Vec<(String, bool)>,
    /// `askdns` queries: (template, TXT?).
    pub ask: Vec<(String, bool)>,
    /// `uridnsbl_skip_domain`.
    pub skip: HashSet<String>,
    /// `redirector_pattern`s: the URIs looked up are those the uri rules read.
    pub redirectors: super::sa_uris::Redirectors,
    /// `trusted_networks` and kin: which relay is the last external one, the one the
    /// last-external sets ask about.
    pub networks: super::networks::Networks,
}

impl DnsPlan {
    /// Of relay addresses (the client first, then the `Received:` relays, newest first), the
    /// one the last-external sets ask about: the first with a public address (SpamAssassin's
    /// `IP_PRIVATE` is not) that, when `internal_networks` (or `trusted_networks`) is
    /// configured, is outside them. Authenticated handovers are not seen here (the rules'
    /// relay analysis sees them); for them the answer is the same relay or an earlier one.
    pub fn last_external(&self, relays: &[IpAddr]) -> Option<usize> {
        let (_, internal) = self.networks.effective();
        let inferred = self.networks.inferred();
        relays.iter().position(|&ip| {
            !super::relays::is_private(&ip.to_string()) && (inferred || !internal.contains(ip))
        })
    }
}

impl DnsPlan {
    /// The plan for the calls of a ruleset.
    pub fn of<'a>(calls: impl IntoIterator<Item = &'a Call>, skip: HashSet<String>) -> DnsPlan {
        let mut p = DnsPlan {
            skip,
            ..DnsPlan::default()
        };
        for c in calls {
            match c {
                Call::Rbl { set, zone, txt, .. } => {
                    let e = (set.clone(), zone.clone(), *txt, last_only(set));
                    if !p.ip.contains(&e) {
                        p.ip.push(e);
                    }
                }
                Call::UriBl { zone, .. } if !p.uri.contains(zone) => p.uri.push(zone.clone()),
                Call::UriIp {
                    zone, a_records, ..
                } => {
                    let e = (zone.clone(), *a_records);
                    if !p.uri_ip.contains(&e) {
                        p.uri_ip.push(e);
                    }
                }
                Call::AskDns { template, txt, .. } => {
                    let e = (template.clone(), *txt);
                    if !p.ask.contains(&e) {
                        p.ask.push(e);
                    }
                }
                _ => {}
            }
        }
        p
    }

    /// Whether the plan asks for anything.
    pub fn is_empty(&self) -> bool {
        self.ip.is_empty() && self.uri.is_empty() && self.ask.is_empty() && self.uri_ip.is_empty()
    }
}

/// Sets that look at the relay that handed the message over (or, for allowlists, the first
/// trusted one, which for a gateway is the same address) rather than every untrusted relay.
fn last_only(set: &str) -> bool {
    set.ends_with("-lastexternal") || set.ends_with("-firsttrusted")
}

/// What an eval rule reads besides the header view.
pub struct EvalInput<'a> {
    /// The message.
    pub msg: &'a Message,
    /// Text found outside the text parts (OCR), a body text part of its own.
    pub extracted_text: Option<&'a str>,
    /// The rendered body lines, the Subject first (the engine's, when body rules built them).
    pub body: OnceCell<Vec<Vec<u8>>>,
    /// The URIs of the message as the uri rules read them (the engine's, when it listed them).
    pub uris: OnceCell<Vec<Vec<u8>>>,
    /// The URI hosts as host lists look them up, computed on first use (every host-list rule
    /// reads them).
    pub uri_hosts: OnceCell<Vec<ListedHost>>,
    /// The message's top-level headers.
    pub headers: &'a Headers,
    /// MAIL FROM.
    pub mail_from: Option<&'a str>,
    /// Network facts, when the DNS or auth stage ran.
    pub net: Option<&'a Facts>,
    /// Zones of the sets named by `check_rbl` calls.
    pub set_zones: &'a HashMap<String, (String, bool)>,
    /// The ruleset's address lists (`welcomelist_from`, `enlist_addrlist`, ...).
    pub addr_lists: &'a super::load::AddrLists,
    /// The ruleset's URI host lists (`enlist_uri_host`, `blocklist_uri_host`, ...).
    pub uri_host_lists: &'a HashMap<String, HashMap<String, bool>>,
    /// The ruleset's `redirector_pattern`s, for a URI list made here.
    pub redirectors: &'a super::sa_uris::Redirectors,
    /// The ruleset's free mail providers.
    pub freemail: &'a super::load::Freemail,
    /// What `check_freemail_replyto` reads, when the ruleset has such rules and the engine read
    /// it (before the body rules: see [`FreemailReply`]).
    pub freemail_reply: Option<&'a FreemailReply>,
    /// MIMEEval's part statistics, computed on first use.
    pub mime: OnceCell<MimeStats>,
    /// The Date: header minus the nearest Received: date, computed on first use.
    pub date_diff: OnceCell<i64>,
    /// Each HTML part's length in characters and tags, computed on first use.
    pub html: OnceCell<Vec<(usize, std::borrow::Cow<'a, super::sa_html::Tags>)>>,
    /// The HTML parts the body's rendering rendered, when it ran: the evals reading a part's
    /// rendering or tags take them from here instead of rendering it again.
    pub rendered_html: &'a [super::view::RenderedHtml],
    /// How the text and HTML of multipart/alternative parts differ, computed on first use.
    pub madiff: OnceCell<AltDifference>,
    /// `all_from_addrs`, computed on first use (several list rules read it).
    pub senders: OnceCell<Vec<String>>,
    /// `all_to_addrs`, computed on first use.
    pub recipients: OnceCell<Vec<String>>,
    /// The body's share of capitals, computed on first use (three rules read it).
    pub uppercase: OnceCell<f64>,
    /// Whether the recipients are sorted and how similar they are, computed on first use
    /// (two rules read it).
    pub recipient_order: OnceCell<(bool, f64)>,
    /// The relays of the Received fields.
    pub relays: &'a super::relays::Relays,
    /// Their public addresses as the `check_rbl` sets read them, computed on first use.
    pub rbl_relays: OnceCell<RblRelays>,
    /// ImageInfo's reading of the image parts, computed on first use.
    pub images: OnceCell<super::images::ImageInfo>,
    /// The flags SpamAssassin's parser leaves on the message, computed on first use.
    pub parse_flags: OnceCell<super::sa_parse::ParseFlags>,
    /// `ok_locales`; empty when not set (`all`).
    pub ok_locales: &'a [String],
}

/// What FreeMail's `check_freemail_replyto` reads of a message: the From and Reply-To
/// addresses, and the free mail addresses its `_parse_body` finds in the body.
///
/// `_parse_body` edits the body text it reads, in place (it deletes links holding an address
/// and addresses followed by a word and a colon, such as `a@b.com wrote:`), and header evals
/// run before body rules: when a message's reply check reaches the body, SpamAssassin's body
/// rules see the edited text. [`FreemailReply::read_body`] does the same edit on a copy of
/// the lines, which the engine's body rules then read (the URI list was made from the lines
/// before, as in SpamAssassin, where `_parse_body` lists the URIs first).
#[derive(Debug, Default)]
pub struct FreemailReply {
    from_fm: bool,
    replyto_fm: bool,
    has_replyto: bool,
    from_not_in_replyto: bool,
    bulk_envfrom: bool,
    from: Vec<String>,
    replyto: Vec<String>,
    /// The body's free mail addresses; `None` when the body was not read or had too many
    /// addresses (`freemail_skip_when_over_max`).
    body: Option<Vec<String>>,
}

impl FreemailReply {
    /// Reads the From and Reply-To addresses and what the envelope sender looks like.
    pub fn read(fm: &super::load::Freemail, headers: &Headers, env_from: &str) -> Self {
        let mut r = FreemailReply::default();
        if !fm.available() {
            return r;
        }
        let addrs = |name: &str| -> Vec<String> {
            addresses(headers, &format!("{name}:addr"), Some(env_from))
                .iter()
                .map(|a| a.to_lowercase())
                .collect()
        };
        r.bulk_envfrom = fm.bulk_envfrom(env_from);
        r.from = addrs("From");
        r.replyto = addrs("Reply-To");
        r.from_fm = r.from.iter().any(|a| fm.is_freemail(a));
        r.replyto_fm = r.replyto.iter().any(|a| fm.is_freemail(a));
        r.has_replyto = !r.replyto.is_empty();
        r.from_not_in_replyto = !r.from.iter().any(|f| r.replyto.contains(f));
        r
    }

    /// Whether the `'reply'` form (`reply`) or the `'replyto'` form reaches `_parse_body`.
    fn reaches_body(&self, reply: bool) -> bool {
        if self.bulk_envfrom || self.free_and_apart() {
            return false;
        }
        if reply {
            (!self.has_replyto || self.replyto_fm) && self.from_fm
        } else {
            self.replyto_fm
        }
    }

    /// From and Reply-To both free mail, and From not among the Reply-To addresses: a hit
    /// without reading the body.
    fn free_and_apart(&self) -> bool {
        self.from_fm && self.replyto_fm && self.from_not_in_replyto
    }

    /// Whether either of the forms the ruleset runs (`checks`: `'replyto'`, `'reply'`) reads
    /// the body.
    pub fn reads_body(&self, checks: (bool, bool)) -> bool {
        (checks.0 && self.reaches_body(false)) || (checks.1 && self.reaches_body(true))
    }

    /// `_parse_body` over `lines` (edited as SpamAssassin edits them) and the HTML parts' link
    /// targets.
    pub fn read_body(
        &mut self,
        fm: &super::load::Freemail,
        lines: &mut std::borrow::Cow<'_, [Vec<u8>]>,
        links: &[Vec<u8>],
    ) {
        self.body = fm.parse_body(lines, links);
    }

    /// The rule's verdict (`reply`: the `'reply'` form).
    pub fn verdict(&self, reply: bool) -> bool {
        if self.bulk_envfrom {
            return false;
        }
        if self.free_and_apart() {
            return true;
        }
        if !self.reaches_body(reply) {
            return false;
        }
        let Some(body) = &self.body else {
            return false;
        };
        let reply_addrs = if !reply || self.replyto_fm {
            &self.replyto
        } else {
            &self.from
        };
        body.iter().any(|b| reply_addrs.iter().any(|r| r != b))
    }
}

/// BodyEval's `_multipart_alternative_difference`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AltDifference {
    /// The largest share (%) of an alternative's distinct HTML words its text lacks.
    pub diff: f64,
    /// Distinct HTML words of the last alternative that had any.
    pub html: usize,
    /// Distinct text words of that alternative.
    pub text: usize,
}

/// The parts under `id`, itself first, depth first in order (`find_parts`).
fn subtree(msg: &Message, id: usize, out: &mut Vec<usize>) {
    out.push(id);
    for &c in &msg.parts[id].children {
        subtree(msg, c as usize, out);
    }
}

fn madiff(input: &EvalInput<'_>) -> AltDifference {
    *input.madiff.get_or_init(|| {
        let msg = input.msg;
        let mut r = AltDifference::default();
        let ty = |i: usize| {
            let ct = &msg.parts[i].content_type;
            ct.split([' ', '\t', ';']).next().unwrap_or(ct).to_string()
        };
        // An invitation (multipart/alternative of text/html and text/calendar) is left alone.
        let root = &msg.parts[0];
        if ty(0) == "multipart/alternative"
            && root.children.len() == 2
            && msg.parts[root.children[0] as usize].children.is_empty()
            && msg.parts[root.children[1] as usize].children.is_empty()
            && ty(root.children[0] as usize) == "text/html"
            && ty(root.children[1] as usize) == "text/calendar"
        {
            return r;
        }
        let words = |t: &str, into: &mut HashMap<String, u32>| {
            for w in t.split(|c: char| c.is_whitespace()) {
                if w.chars().any(|c| c.is_alphanumeric() || c == '_') {
                    *into.entry(w.to_string()).or_default() += 1;
                }
            }
        };
        let mut all = Vec::new();
        subtree(msg, 0, &mut all);
        for &ma in all.iter().filter(|&&i| {
            msg.parts[i].kind == PartKind::Multipart && ty(i).starts_with("multipart/alternative")
        }) {
            let (mut html, mut text): (HashMap<String, u32>, HashMap<String, u32>) =
                Default::default();
            let mut under = Vec::new();
            subtree(msg, ma, &mut under);
            for &i in &under {
                let p = &msg.parts[i];
                let t = ty(i);
                if p.kind != PartKind::Leaf || !(t == "text" || t.starts_with("text/")) {
                    continue;
                }
                let Some(body) = super::view::part_text(msg, p) else {
                    continue;
                };
                if t == "text/html" {
                    let done = rendered(input, i);
                    match done {
                        Some(r) => words(&r.text, &mut html),
                        None => words(&super::sa_html::render(&body), &mut html),
                    }
                    let img = |t: &super::sa_html::Tags| t.inside.contains_key("img");
                    if html.is_empty()
                        && done.map_or_else(|| img(&super::sa_html::tags(&body)), |r| img(&r.tags))
                    {
                        html.insert("\n".into(), 1);
                    }
                } else {
                    words(&body, &mut text);
                }
            }
            let orig = html.len();
            if orig == 0 {
                continue;
            }
            r.html = orig;
            r.text = text.len();
            for (k, v) in &text {
                if html
                    .get(k)
                    .is_some_and(|h| i64::from(*h) - i64::from(*v) < 1)
                {
                    html.remove(k);
                }
            }
            let diff = html.len() as f64 / orig as f64 * 100.0;
            if diff > r.diff {
                r.diff = diff;
            }
        }
        r
    })
}

/// Evaluates one call: the rule's hit count (0 or 1).
pub fn eval(call: &Call, input: &EvalInput<'_>) -> u32 {
    u32::from(match call {
        Call::Rbl {
            set,
            zone,
            subtest,
            txt,
            ..
        } => input
            .net
            .is_some_and(|n| rbl_listed(n, rbl_ips(input, set), zone, *txt, subtest)),
        Call::RblSub { set, subtest } => match (input.net, input.set_zones.get(set.as_str())) {
            (Some(n), Some((zone, txt))) => rbl_listed(n, rbl_ips(input, set), zone, *txt, subtest),
            _ => false,
        },
        Call::UriBl { zone, subtest } => input.net.is_some_and(|n| {
            n.uri_domains.iter().any(|d| {
                n.a.get(&lists::domain_query(d, zone))
                    .is_some_and(|a| subtest.any(a))
            })
        }),
        Call::UriIp {
            zone,
            subtest,
            a_records,
        } => input.net.is_some_and(|n| {
            n.uri_ips.iter().any(|(_, ip, via_a)| {
                via_a == a_records
                    && n.a
                        .get(&lists::ip_query(*ip, zone))
                        .is_some_and(|a| subtest.any(a))
            })
        }),
        Call::AskDns {
            template,
            txt,
            answer,
        } => input.net.is_some_and(|n| {
            n.askdns.iter().any(|(t, q, dkim)| {
                // A signing domain counts once its signature verified.
                let signed_ok = dkim.as_ref().is_none_or(|d| {
                    n.auth.as_ref().is_some_and(|a| {
                        a.dkim.iter().any(|s| {
                            s.outcome == auth::Outcome::Pass && s.domain.eq_ignore_ascii_case(d)
                        })
                    })
                });
                t == template
                    && signed_ok
                    && if *txt {
                        n.txt
                            .get(q)
                            .is_some_and(|v| v.iter().any(|s| answer.is_match(s)))
                    } else {
                        n.a.get(q)
                            .is_some_and(|v| v.iter().any(|a| answer.is_match(&a.to_string())))
                    }
            })
        }),
        Call::Auth(t) => input
            .net
            .and_then(|n| n.auth.as_ref())
            .is_some_and(|r| auth_test(r, *t)),
        Call::DkimSignedBy { valid, domains } => input
            .net
            .and_then(|n| n.auth.as_ref())
            .is_some_and(|r| r.dkim_signed_by(*valid, domains)),
        Call::DkimValidEnvelopeFrom => {
            let env = text(header_value(
                input.headers,
                "EnvelopeFrom:addr",
                input.mail_from,
            ));
            // `/\@(\S+)/`: what follows the first `@`, to the first white space.
            let domain = env.split_once('@').map_or("", |(_, d)| {
                d.split(char::is_whitespace).next().unwrap_or("")
            });
            input
                .net
                .and_then(|n| n.auth.as_ref())
                .is_some_and(|r| r.dkim_valid_for(domain))
        }
        Call::MissingTo => {
            let h = input.headers;
            let get = |n: &str| header_value(h, n, None).filter(|v| !v.is_empty());
            get("To").or_else(|| get("Apparently-To")).is_none()
        }
        Call::BounceRelays { found } => {
            input.addr_lists.has("welcomelist_bounce_relays") && (!found || own_relay_quoted(input))
        }
        Call::FromInWelcomelist { def } => welcomelisted(input, *def) > 0,
        Call::ForgedInWelcomelist { def } => {
            welcomelisted(input, *def) < 0 && welcomelisted(input, !*def) == 0
        }
        Call::FromInList(list) => {
            input.addr_lists.has(list)
                && senders(input)
                    .iter()
                    .any(|a| input.addr_lists.contains(list, a))
        }
        Call::ToInList(list) => {
            input.addr_lists.has(list)
                && recipient_addrs(input)
                    .iter()
                    .any(|a| input.addr_lists.contains(list, a))
        }
        Call::ReplyToInList(list) => {
            input.addr_lists.has(list)
                && header_value(input.headers, "Reply-To:addr", None).is_some_and(|v| {
                    // SpamAssassin reads the first address (`get` in scalar context joins
                    // them; a list entry matches the whole string only when there is one).
                    let v = utf8_lossy(&v);
                    input.addr_lists.contains(list, v.trim_end_matches('\n'))
                })
        }
        Call::SpfWelcomelist { def } => {
            let (spf, auth) = if *def {
                ("def_welcomelist_from_spf", "def_welcomelist_auth")
            } else {
                ("welcomelist_from_spf", "welcomelist_auth")
            };
            let lists = input.addr_lists;
            let passed = input
                .net
                .and_then(|n| n.auth.as_ref())
                .is_some_and(|a| a.spf == auth::Outcome::Pass);
            passed
                && header_value(input.headers, "EnvelopeFrom:addr", input.mail_from).is_some_and(
                    |v| {
                        let v = utf8_lossy(&v).to_lowercase();
                        let sender = v.split('\n').next().unwrap_or("");
                        !sender.is_empty()
                            && (lists.contains(spf, sender) || lists.contains(auth, sender))
                    },
                )
        }
        Call::DkimWelcomelist { def } => {
            let (dkim, auth) = if *def {
                ("def_welcomelist_from_dkim", "def_welcomelist_auth")
            } else {
                ("welcomelist_from_dkim", "welcomelist_auth")
            };
            input
                .net
                .and_then(|n| n.auth.as_ref())
                .is_some_and(|a| dkim_welcomelisted(input, a, dkim, auth))
        }
        Call::SubjectInList(list) => {
            input.addr_lists.has(list)
                && header_value(input.headers, "Subject", None).is_some_and(|v| {
                    let v = utf8_lossy(&v);
                    let v = v.trim_end_matches('\n');
                    !v.is_empty() && input.addr_lists.subject_matches(list, v)
                })
        }
        Call::UriHostListed(list) => input.uri_host_lists.get(list.as_str()).is_some_and(|l| {
            !l.is_empty()
                && uri_host_listed(
                    input.uri_hosts.get_or_init(|| {
                        // The DNS stage's list when it made one, as the uri rules read it.
                        listed_hosts(match input.net.and_then(|n| n.uris.as_deref()) {
                            Some(uris) => uris,
                            None => input
                                .uris
                                .get_or_init(|| super::view::uris(input.msg, input.redirectors)),
                        })
                    }),
                    l,
                )
        }),
        Call::SubjectAllCaps => subject_all_caps(input.headers),
        Call::ToInSubject { user } => to_in_subject(input.headers, *user),
        Call::IllegalChars {
            header,
            ratio,
            count,
        } => illegal_chars(input.headers, header, *ratio, *count),
        Call::ShiftedDate { min, max } => {
            let d = *input.date_diff.get_or_init(|| date_diff(input.headers)) as f64;
            min.is_none_or(|m| d >= 3600.0 * m) && max.is_none_or(|m| d < 3600.0 * m)
        }
        Call::Mime(t) => {
            let m = input.mime.get_or_init(|| mime_stats(input.msg));
            match t {
                MimeTest::Base64Count => m.base64_count > 0,
                MimeTest::QpCount => m.qp_count != 0.0,
                MimeTest::Base64EncodedText => m.base64_encoded_text,
                MimeTest::Attachment => m.attachment,
                MimeTest::QpLongLine => m.qp_long_line,
                MimeTest::BadIsoCharset => m.bad_iso_charset,
                MimeTest::FarawayCharset => {
                    let l = input.ok_locales;
                    !l.is_empty()
                        && !super::locales::all(l)
                        && input.msg.parts.iter().any(|p| {
                            p.charset.as_deref().is_some_and(|c| {
                                c.chars().any(|ch| ch.is_ascii_alphabetic())
                                    && !super::locales::charset_ok(c, l)
                            })
                        })
                }
                MimeTest::PartLimitExceeded => input.msg.parts.len() > 1000,
            }
        }
        Call::MimeHtml | Call::MimeHtmlOnly => {
            let ct = text(header_value(input.headers, "Content-Type", None)).to_ascii_lowercase();
            if ct.starts_with("text/html") {
                true
            } else {
                let m = input.mime.get_or_init(|| mime_stats(input.msg));
                m.html_count > 0 && (matches!(call, Call::MimeHtml) || m.text_count == 0)
            }
        }
        Call::MultipartRatio { min, max } => {
            let m = input.mime.get_or_init(|| mime_stats(input.msg));
            m.multipart_ratio >= *min && m.multipart_ratio < *max
        }
        Call::MaNonText => ma_non_text(input.msg),
        Call::OutlookMessageId => outlook_message_id(input.headers),
        Call::VerticalWords { min, max } => {
            // Lengths in bytes: SpamAssassin's body text array holds UTF-8 octets.
            let lines = body_of(input);
            let most = lines
                .iter()
                .filter(|l| l.len() > 5)
                .map(|l| {
                    let spaces = l.iter().filter(|&&b| b == b' ').count();
                    let others = l.len() - spaces;
                    if spaces > others || others == 0 {
                        100
                    } else {
                        100 * spaces / others
                    }
                })
                .max()
                .map_or(-1.0, |p| p as f64);
            most >= *min && most < *max
        }
        Call::Uppercase { min, max } => {
            let u = *input.uppercase.get_or_init(|| uppercase_percent(input));
            u > *min && u <= *max
        }
        Call::BodyLength(max) => {
            // `pristine_body_length`: the body as received, line endings as LF. Each CRLF
            // counts one byte less, so only a body up to twice the limit needs them counted.
            input.msg.parts.first().is_some_and(|p| {
                let body = &input.msg.raw[p.body.start as usize..p.body.end as usize];
                body.len() <= *max
                    || (body.len() / 2 <= *max && {
                        let crs = memchr::memmem::find_iter(body, b"\r\n").count();
                        body.len() - crs <= *max
                    })
            })
        }
        Call::HeaderCount { header, min, max } => {
            let mut seen: Vec<&[u8]> = Vec::new();
            for v in input.headers.values(header, false) {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            (*min..=*max).contains(&seen.len())
        }
        Call::SortedRecipients => {
            input
                .recipient_order
                .get_or_init(|| recipients(input.headers))
                .0
        }
        Call::SimilarRecipients { min, max } => {
            let v = input
                .recipient_order
                .get_or_init(|| recipients(input.headers))
                .1;
            min.is_none_or(|m| v >= m) && max.is_none_or(|m| v < m)
        }
        Call::UnresolvedTemplate => unresolved_template(input.headers),
        Call::RatwareNameId => ratware_name_id(input.headers),
        Call::FreemailHeader { header, pattern } => {
            let fm = input.freemail;
            // `$pms->get("$header:addr")`: a request with modifiers gets `:addr` appended.
            let req = format!("{header}:addr");
            fm.available()
                && header_value(input.headers, &req, input.mail_from).is_some_and(|v| {
                    utf8_lossy(&v).split('\n').map(str::to_lowercase).any(|e| {
                        fm.is_freemail(&e) && pattern.as_ref().is_none_or(|p| p.is_match(&e))
                    })
                })
        }
        Call::FreemailFrom(pattern) => {
            let fm = input.freemail;
            fm.available()
                && senders(input)
                    .iter()
                    .map(|a| a.to_lowercase())
                    .any(|e| fm.is_freemail(&e) && pattern.as_ref().is_none_or(|p| p.is_match(&e)))
        }
        Call::FreemailReplyto(reply) => input.freemail_reply.is_some_and(|f| f.verdict(*reply)),
        Call::MpartAltDiff { min, max } => {
            let d = madiff(input).diff;
            (*min == 0.0 || d > *min) && max.is_none_or(|m| d <= m)
        }
        Call::MpartAltDiffCount { ratio, min_html } => {
            let d = madiff(input);
            d.html as f64 > *min_html && d.text as f64 / d.html as f64 > *ratio
        }
        Call::AsciiTextIllegal => {
            input
                .mime
                .get_or_init(|| mime_stats(input.msg))
                .ascii_illegal
        }
        Call::UnicodeRatio(r) => {
            let m = input.mime.get_or_init(|| mime_stats(input.msg));
            m.unicode_ratio >= *r
        }
        Call::ForgedGmail => forged_gmail(input.headers),
        Call::HtmlMessage => !html_parts(input).is_empty(),
        Call::HtmlTagExists(tag) => html_parts(input)
            .iter()
            .any(|(_, t)| t.inside.contains_key(tag)),
        Call::HtmlTagBalance { tag, op, n } => html_parts(input)
            .iter()
            .any(|(_, t)| t.inside.get(tag).is_some_and(|&v| compare(v, op, *n))),
        Call::HtmlTest(flag) => html_parts(input).iter().any(|(_, t)| match flag {
            HtmlFlag::Embeds => t.embeds,
            HtmlFlag::FontFaceBad => t.font_face_bad,
            HtmlFlag::FormActionMailto => t.form_action_mailto,
            HtmlFlag::FontLowContrast => t.font_low_contrast,
            HtmlFlag::FontInvalidColor => t.font_invalid_color,
        }),
        Call::HtmlEval { test, op, n } => html_parts(input)
            .iter()
            .any(|(len, t)| test.of(*len, t).is_some_and(|v| compare(v, op, *n))),
        Call::HtmlTitleSubjectRatio(ratio) => {
            // `$pms->get('Subject')`, its final newline counted, as `length` counts it.
            let subject = text(header_value(input.headers, "Subject", None));
            let subject_len = subject.chars().count();
            subject_len > 0
                && html_parts(input).iter().any(|(_, t)| {
                    let longest = t
                        .titles
                        .iter()
                        .filter(|s| !s.is_empty() && s.as_str() != "0")
                        .map(|s| s.chars().count())
                        .max()
                        .unwrap_or(0);
                    longest as f64 / subject_len as f64 > *ratio
                })
        }
        Call::HtmlImageRatio { min, max } => html_parts(input).iter().any(|(_, t)| {
            let ratio = t.non_space_len as f64 / t.image_area as f64;
            t.image_area > 0 && ratio > *min && ratio <= *max
        }),
        Call::HtmlImageOnly { min, max } => html_parts(input).iter().any(|(len, t)| {
            t.inside.contains_key("img") && (*len as f64) > *min && (*len as f64) <= *max
        }),
        Call::HtmlRange { test, min, max } => html_parts(input).iter().any(|(len, t)| {
            test.of(*len, t)
                .is_some_and(|v| v > *min && max.is_none_or(|m| v <= m))
        }),
        Call::MimeAnomaly(name) => input.msg.anomalies.iter().any(|a| a.name() == name),
        Call::ParseFlag(name) => input
            .parse_flags
            .get_or_init(|| super::sa_parse::parse_flags(&input.msg.raw))
            .get(name)
            .unwrap_or(false),
        Call::UriTruncated => super::view::uris_truncated(
            body_of(input),
            html_parts(input).iter().map(|(_, t)| t.as_ref()),
            input.redirectors,
        ),
        Call::HttpsHttpMismatch { min, max } => html_parts(input)
            .iter()
            .any(|(_, t)| https_http_mismatch(t, *min, *max)),
        Call::HttpsIpMismatch => html_parts(input).iter().any(|(_, t)| https_ip_mismatch(t)),
        Call::IframeSrc => html_parts(input).iter().any(|(_, t)| t.iframe_src),
        Call::BlankLineRatio {
            min,
            max,
            min_lines,
        } => {
            let r = blank_line_ratio(input.msg, *min_lines);
            r <= *max && (*min == 0.0 || r > *min)
        }
        Call::StockInfo(min) => *min == 0 || stock_info(input.msg) >= *min,
        Call::Relay(t) => super::relays::run(
            *t,
            input.relays,
            input.headers,
            input.mail_from.unwrap_or_default(),
        ),
        Call::Faraway(w) => faraway(*w, input),
        Call::Image(t) => image_test(t, input),
        Call::HtmlTextMatch { texts, pattern } => html_parts(input).iter().any(|(_, t)| {
            let texts = match texts {
                HtmlTexts::Comment => &t.comments,
                HtmlTexts::Title => &t.titles,
                HtmlTexts::Anchor => &t.anchor_texts,
            };
            texts
                .iter()
                .any(|s| pattern.is_match(s.as_bytes()).unwrap_or(false))
        }),
        Call::Envelope(t) => envelope_test(*t, input),
        Call::FromDomainInReceived {
            mentions,
            relayed,
            desired,
        } => from_domain_in_received(input, mentions, relayed) == Some(*desired),
        Call::Base64Length { min, max } => {
            let m = input.mime.get_or_init(|| mime_stats(input.msg));
            max.is_none_or(|x| m.base64_length <= x) && m.base64_length >= *min
        }
    })
}

/// BodyEval's blank line ratio: the per cent of the decoded text parts' lines (as rawbody rules
/// read them) holding nothing but white space; -1 for fewer than `min_lines` lines.
fn blank_line_ratio(msg: &Message, min_lines: usize) -> f64 {
    // SpamAssassin's parser keeps at most 20 lines of each run of blank body lines (before
    // any decoding): the text it decodes then is that of the message so cut.
    let cut = squeeze_blank_runs(
        &msg.raw,
        msg.parts.first().map_or(0, |p| p.body.start as usize),
    );
    let cut = cut.map(|raw| Message::parse(raw.into()));
    let msg = cut.as_ref().unwrap_or(msg);
    let (mut lines, mut blank) = (0usize, 0usize);
    for chunk in super::view::rawbody_chunks(msg) {
        for line in line_slices(&chunk) {
            lines += 1;
            blank += usize::from(line.iter().all(|&b| super::sa_parse::space(b)));
        }
    }
    if lines < min_lines {
        -1.0
    } else {
        100.0 * blank as f64 / lines as f64
    }
}

/// `Message->new`'s cut of blank body lines: of each run of more than 20 lines holding only
/// white space, 20 are kept (21 when the run starts the body); `None` when no run is that long.
fn squeeze_blank_runs(raw: &[u8], body_start: usize) -> Option<Vec<u8>> {
    const MAX_BLANK_LINES: usize = 20;
    let body = raw.get(body_start..)?;
    let lines: Vec<&[u8]> = line_slices(body).collect();
    let blank = |l: &[u8]| l.iter().all(|&b| super::sa_parse::space(b));
    let mut keep = vec![true; lines.len()];
    let mut start: Option<usize> = None;
    let mut cut = false;
    for cnt in (0..lines.len()).rev() {
        if blank(lines[cnt]) {
            start.get_or_insert(cnt);
            if cnt != 0 {
                continue;
            }
        }
        if let Some(s) = start.take() {
            let num = s - cnt;
            if num > MAX_BLANK_LINES {
                keep[cnt + 2..cnt + 2 + num - MAX_BLANK_LINES].fill(false);
                cut = true;
            }
        }
    }
    cut.then(|| {
        let mut out = raw[..body_start].to_vec();
        for (l, k) in lines.iter().zip(&keep) {
            if *k {
                out.extend_from_slice(l);
            }
        }
        out
    })
}

/// BodyEval's `_check_stock_info`: the distinct stock-tip field names among the `Name: value`
/// lines of the message's first text/plain part (as SpamAssassin types parts: any `text/*` but
/// HTML, vCard and calendar, or none declared).
fn stock_info(msg: &Message) -> usize {
    use std::sync::OnceLock;
    static RE: OnceLock<[regex::Regex; 2]> = OnceLock::new();
    let [field, stock] = RE.get_or_init(|| {
        [
            r"(?m)^\s*([^:\s][^:\n]{2,29})\s*:\s*\S",
            concat!(
                r"(^trad(?:e|ing)date|company(?:name)?|",
                r"s\w?(?:t\w?o\w?c\w?k|y\w?m(?:\w?b\w?o\w?l)?)|t(?:arget|icker)|",
                r"(?:opening|current)p(?:rice)?|p(?:rojected|osition)|expectations|weeks?high|",
                r"marketperformance|(?:year|week|month|day|price)(?:target|estimates?)|sector|",
                r"r(?:ecommendation|ating))$"
            ),
        ]
        .map(|p| regex::Regex::new(p).expect("a valid pattern"))
    });
    let plain = msg
        .leaves()
        .find(|p| super::sa_parse::content_type(Some(&p.content_type)).0 == "text/plain");
    let Some(text) = plain.and_then(|p| super::view::part_text(msg, p)) else {
        return 0;
    };
    let mut chunks = Vec::new();
    super::view::split_short_paragraphs(text.as_bytes(), &mut chunks);
    let mut found = HashSet::new();
    for chunk in &chunks {
        for c in field.captures_iter(&String::from_utf8_lossy(chunk)) {
            let name: String = c[1]
                .to_lowercase()
                .chars()
                .filter(|c| c.is_ascii_lowercase())
                .collect();
            if let Some(m) = stock.captures(&name) {
                found.insert(m[1].to_string());
            }
        }
    }
    found.len()
}

/// Each link's texts, by the `href` they are filed under (`uri_detail`'s `anchor_text`).
fn anchors_by_href(t: &super::sa_html::Tags) -> HashMap<&str, Vec<&str>> {
    let mut by: HashMap<&str, Vec<&str>> = HashMap::new();
    for (href, text) in t.anchor_hrefs.iter().zip(&t.anchor_texts) {
        by.entry(href.as_str()).or_default().push(text.as_str());
    }
    by
}

/// `IS_IP_ADDRESS` for what a URL's host can be here (no `:`): a dotted quad.
fn is_ipv4(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// `RegistryBoundaries::trim_domain` of a host as written: lower case, repeated dots one,
/// dots at the ends dropped, then the registrable domain.
fn sa_trim_domain(host: &str) -> String {
    let mut h = host.to_lowercase();
    while h.contains("..") {
        h = h.replace("..", ".");
    }
    trim_domain(h.trim_matches('.'))
}

/// `uri_to_domain` of a trimmed host gives a domain, and that domain's TLD is valid.
fn domain_valid(trimmed: &str) -> bool {
    // Whatever is up to the last `@` is taken for a user name.
    let host = trimmed.rsplit_once('@').map_or(trimmed, |(_, h)| h);
    static ESCAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let escape = ESCAPE.get_or_init(|| {
        regex::Regex::new(r"%(?:2[1-9a-f]|[3-6][0-9a-f]|7[0-9a-e])").expect("a valid pattern")
    });
    if escape.is_match(host) || is_ipv4(host) {
        // An address is its own domain, and no TLD.
        return false;
    }
    // (The plugin then asks the same of the host's registrable domain, which ends in the same
    // TLD.)
    super::sa_uris::is_fqdn_valid(host.as_bytes()) && super::sa_uris::is_domain_valid(host)
}

/// HTTPSMismatch's `check_https_http_mismatch` over one HTML part's links.
fn https_http_mismatch(t: &super::sa_html::Tags, min: usize, max: Option<usize>) -> bool {
    static RE: std::sync::OnceLock<[regex::Regex; 2]> = std::sync::OnceLock::new();
    let [href_host, shown] = RE.get_or_init(|| {
        [r"(?i)^https?://([^/:?#]+)", r"(?i)https://([^\s/:?#]+)"]
            .map(|p| regex::Regex::new(p).expect("a valid pattern"))
    });
    // Only a link text showing an `https://` URL can hit; most parts have none.
    if !t.anchor_texts.iter().any(|text| shown.is_match(text)) {
        return false;
    }
    let (mut hit, mut anchors) = (false, 0);
    for (href, texts) in anchors_by_href(t) {
        // A link to an address is another rule's (`check_https_ip_mismatch`).
        let host = href_host.captures(href).and_then(|c| c.get(1));
        let Some(host) = host.map(|m| m.as_str()).filter(|h| !is_ipv4(h)) else {
            continue;
        };
        let uri = sa_trim_domain(host);
        if !domain_valid(&uri) {
            continue;
        }
        anchors += 1;
        hit |= texts.iter().any(|text| {
            let Some(c) = shown.captures(text) else {
                return false;
            };
            let https = &c[1];
            let https = if is_ipv4(https) {
                https.to_string()
            } else {
                let d = sa_trim_domain(https);
                if !super::sa_uris::is_domain_valid(&d) {
                    return false;
                }
                d
            };
            uri != https
        });
    }
    hit && anchors >= min && max.is_none_or(|m| anchors < m)
}

/// URIEval's `check_https_ip_mismatch` over one HTML part's links.
fn https_ip_mismatch(t: &super::sa_html::Tags) -> bool {
    static RE: std::sync::OnceLock<[regex::Regex; 3]> = std::sync::OnceLock::new();
    let [to_ip, https_ip, https] = RE.get_or_init(|| {
        [
            r"(?i)^https?:/*(?:[^@/]+@)?\d+\.\d+\.\d+\.\d+",
            r"(?i)^https:/*(?:[^@/]+@)?\d+\.\d+\.\d+\.\d+",
            r"(?i)https:",
        ]
        .map(|p| regex::Regex::new(p).expect("a valid pattern"))
    });
    anchors_by_href(t)
        .into_iter()
        .filter(|(href, _)| to_ip.is_match(href))
        .any(|(_, texts)| {
            texts
                .iter()
                .any(|text| !https_ip.is_match(text) && https.is_match(text))
        })
}

/// Part `i` as the body's rendering rendered it, when it did.
fn rendered<'a>(input: &EvalInput<'a>, i: usize) -> Option<&'a super::view::RenderedHtml> {
    input.rendered_html.iter().find(|r| r.part == i)
}

/// The HTML parts SpamAssassin renders (text/html leaves), each with its length in characters
/// and its tags (borrowed from the body's rendering when it ran).
fn html_parts<'a>(
    input: &'a EvalInput<'_>,
) -> &'a [(usize, std::borrow::Cow<'a, super::sa_html::Tags>)] {
    input.html.get_or_init(|| {
        input
            .msg
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == PartKind::Leaf && p.content_type == "text/html")
            .filter_map(|(i, p)| Some((i, super::view::part_text(input.msg, p)?)))
            // SpamAssassin's results for a part with no more than whitespace read as no HTML
            // (measured: its HTML_MESSAGE stays off for them).
            .filter(|(_, t)| t.chars().any(|c| !c.is_whitespace()))
            .map(|(i, t)| {
                let tags = match rendered(input, i) {
                    Some(r) => std::borrow::Cow::Borrowed(&r.tags),
                    None => std::borrow::Cow::Owned(super::sa_html::tags(&t)),
                };
                (t.chars().count(), tags)
            })
            .collect()
    })
}

/// HeaderEval's `check_for_forged_gmail_received_headers`.
fn forged_gmail(h: &Headers) -> bool {
    use std::sync::OnceLock;
    static RE: OnceLock<[regex::Regex; 4]> = OnceLock::new();
    let [from_re, x10, x2002, esmtpsa] = RE.get_or_init(|| {
        [
            regex::Regex::new(r"(?i)\bgmail\.com$").expect("re"),
            regex::Regex::new(r"by 10\.\S+ with SMTP id \S+").expect("re"),
            regex::Regex::new(r"by 2002:a\d\d:\w+:\S+ with SMTP id \S+").expect("re"),
            regex::Regex::new(r"by smtp\.googlemail\.com with ESMTPSA id \S+").expect("re"),
        ]
    });
    // `$` before a final newline, as Perl's does.
    let from = text(header_value(h, "From:addr", None));
    if !from_re.is_match(from.strip_suffix('\n').unwrap_or(&from)) {
        return false;
    }
    let xreceived = text(header_value(h, "X-Received", None));
    if x10.is_match(&xreceived) || x2002.is_match(&xreceived) {
        return false;
    }
    if esmtpsa.is_match(&text(header_value(h, "Received", None))) {
        return false;
    }
    let len = |n: &str| text(header_value(h, n, None)).chars().count();
    !(len("X-Gm-Message-State") >= 60 && len("X-Google-Smtp-Source") >= 60)
}

/// BodyEval's `check_for_uppercase` figure: upper-case letters per letter and digit, in percent,
/// over the body text lines with an inner space (the Subject first); 0 under 200 characters or
/// for charsets written in capitals (SpamAssassin's CHARSETS_LIKELY_TO_FP_AS_CAPS).
fn uppercase_percent(input: &EvalInput<'_>) -> f64 {
    let mut charsets: Vec<String> = input
        .msg
        .parts
        .iter()
        .filter_map(|p| p.charset.clone())
        .collect();
    let ct = text(header_value(input.headers, "Content-Type", None)).to_ascii_lowercase();
    if let Some(i) = ct.find("charset=") {
        let v = ct[i + 8..].trim_start_matches(['"', '\'']);
        charsets.push(
            v.split(['"', '\'', ';', ' ', '\n'])
                .next()
                .unwrap_or("")
                .to_string(),
        );
    }
    if charsets.iter().any(|c| caps_charset(c)) {
        return 0.0;
    }
    let lines = body_of(input);
    let (mut len, mut lower, mut upper) = (0usize, 0usize, 0usize);
    for l in lines {
        let counts = if l.is_ascii() {
            ascii_case_counts(l)
        } else {
            case_counts(&utf8_lossy(l))
        };
        if let Some((chars, low, up)) = counts {
            len += chars;
            lower += low;
            upper += up;
        }
    }
    if len < 200 || upper + lower == 0 {
        return 0.0;
    }
    upper as f64 / (upper + lower) as f64 * 100.0
}

/// [`uppercase_percent`]'s figures for a line: its length in characters, lower-case letters
/// and digits, upper-case letters; `None` for a line it skips (no inner white space, or
/// [`lingering_base64`]).
fn case_counts(line: &str) -> Option<(usize, usize, usize)> {
    // `/\S\s+\S/`: an inner space.
    if !line.trim().chars().any(char::is_whitespace) {
        return None;
    }
    if lingering_base64(line.split(' ').map(str::as_bytes)) {
        return None;
    }
    let (lower, upper) = case_bytes(line.as_bytes());
    Some((line.chars().count(), lower, upper))
}

/// ASCII lower-case letters and digits, and upper-case letters, among the bytes of `l`: two
/// counts without a branch per byte, which the compiler runs many bytes at a time (a loop
/// that tested `lowercase || digit` byte by byte cost 5 µs a corpus message).
fn case_bytes(l: &[u8]) -> (usize, usize) {
    let lower = l
        .iter()
        .filter(|&&b| (b.wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'0') < 10))
        .count();
    let upper = l.iter().filter(|&&b| b.wrapping_sub(b'A') < 26).count();
    (lower, upper)
}

/// [`case_counts`] for an ASCII line, its bytes its characters.
fn ascii_case_counts(l: &[u8]) -> Option<(usize, usize, usize)> {
    // White space as `char::is_whitespace` has it in ASCII (`\x0b` included).
    let space = |b: u8| matches!(b, b' ' | b'\t'..=b'\r');
    let start = l.iter().position(|&b| !space(b))?;
    let end = l.iter().rposition(|&b| !space(b))?;
    if !l[start..end].iter().any(|&b| space(b)) {
        return None;
    }
    if lingering_base64(l.split(|&b| b == b' ')) {
        return None;
    }
    let (lower, upper) = case_bytes(l);
    Some((l.len(), lower, upper))
}

/// Lingering base64, `^(?:[A-Za-z0-9+/=]{60,76} ){2}`, over a line's space-separated words.
fn lingering_base64<'a>(mut words: impl Iterator<Item = &'a [u8]>) -> bool {
    let b64 = |w: &[u8]| {
        (60..=76).contains(&w.len())
            && w.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    };
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(a), Some(b), Some(_)) if b64(a) && b64(b)
    )
}

/// HeaderEval's `check_outlook_message_id` (which, as written, reads the date of the whole
/// Received: text rather than of the match it looks for).
fn outlook_message_id(h: &Headers) -> bool {
    let id = text(header_value(h, "MESSAGEID", None));
    let b = id.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    // `^<[0-9a-f]{4}([0-9a-f]{8})\$[0-9a-f]{8}\$[0-9a-f]{8}\@`
    if b.len() < 33
        || b[0] != b'<'
        || !hex(&b[1..13])
        || b[13] != b'$'
        || !hex(&b[14..22])
        || b[22] != b'$'
        || !hex(&b[23..31])
        || b[31] != b'@'
    {
        return false;
    }
    let token = i64::from_str_radix(&id[5..13], 16).unwrap_or(0);
    let expected = |t: i64| (t as f64 * 0.002_328_306_436_538_7 + 27_111_902.832_984_9) as i64;
    let date = super::sa_date::parse_rfc822_date(&text(header_value(h, "Date", None))).unwrap_or(0);
    if (token - expected(date)).abs() < 250 {
        return false;
    }
    let rcvd =
        super::sa_date::parse_rfc822_date(&text(header_value(h, "Received", None))).unwrap_or(0);
    (token - expected(rcvd)).abs() >= 250
}

/// HeaderEval's `_check_date_diff`: the Date: (or Resent-Date:) time minus the Received:
/// date nearest to it; 0 without a date or without Received: dates.
fn date_diff(h: &Headers) -> i64 {
    let mut date = None;
    'outer: for name in ["resent-date", "date"] {
        for v in h.values(name, false) {
            let v = utf8_lossy(v);
            let v = v.trim_end_matches('\n');
            if !v.is_empty() {
                date = super::sa_date::parse_rfc822_date(v);
            }
            if date.is_some() {
                break 'outer;
            }
        }
    }
    let Some(date) = date else { return 0 };
    let received: Vec<String> = text(header_value(h, "Received", None))
        .split('\n')
        .map(str::to_string)
        .collect();
    let times = super::sa_date::received_times(&received);
    if times.is_empty() {
        return 0;
    }
    let mut diffs: Vec<i64> = times.iter().map(|t| date - t).collect();
    if diffs.len() > 1 && diffs.last() == Some(&0) {
        diffs.pop();
    }
    diffs.sort_by_key(|d| d.abs());
    diffs[0]
}

/// MIMEEval's `_check_attachments`, the statistics the rules read.
#[derive(Debug, Clone, Default)]
pub struct MimeStats {
    html_count: u32,
    text_count: u32,
    base64_count: u32,
    /// Parts with a quoted-printable encoding; once QP lines were seen, SpamAssassin's
    /// count of needlessly encoded characters in them instead.
    qp_count: f64,
    base64_encoded_text: bool,
    attachment: bool,
    qp_long_line: bool,
    bad_iso_charset: bool,
    multipart_ratio: f64,
    base64_length: usize,
    /// A us-ascii text/plain line with NUL, a bare CR or 8-bit bytes.
    ascii_illegal: bool,
    /// `&#xHHHH;` entities per plain character in 7/8-bit text/plain.
    unicode_ratio: f64,
}

fn field_lower(msg: &Message, part: usize, name: &str) -> String {
    msg.field(part as u32, name)
        .map(|v| {
            let v = mxgate_core::mime::header::unfold(v);
            utf8_lossy(&v).trim().to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn line_len(l: &[u8]) -> usize {
    if l.ends_with(b"\r\n") {
        l.len() - 1
    } else {
        l.len()
    }
}

fn mime_stats(msg: &Message) -> MimeStats {
    let mut m = MimeStats {
        multipart_ratio: 1.0,
        ..MimeStats::default()
    };
    let mut alternative = false;
    let (mut qp_bytes, mut qp_encoded) = (0usize, 0.0f64);
    let (mut normal_chars, mut unicode_chars) = (0usize, 0usize);
    // (type, bytes) of each leaf; bytes only for non-attachments.
    let mut leaves: Vec<(String, Option<usize>)> = Vec::new();
    let ascii_names = [
        "us-ascii",
        "ansi_x3.4-1968",
        "iso-ir-6",
        "ansi_x3.4-1986",
        "iso_646.irv:1991",
        "ascii",
        "iso646-us",
        "us",
        "ibm367",
        "cp367",
        "csascii",
    ];
    for (i, p) in msg.parts.iter().enumerate() {
        let ctype = p.content_type.as_str();
        if ctype == "multipart/alternative" {
            alternative = true;
        }
        let cte = field_lower(msg, i, "content-transfer-encoding");
        let cd = field_lower(msg, i, "content-disposition");
        let charset = p.charset.clone().unwrap_or_default();
        if ctype == "text/html" {
            m.html_count += 1;
        } else if ctype.starts_with("text") {
            m.text_count += 1;
        }
        if cte.contains("base64") {
            m.base64_count += 1;
        } else if cte.contains("quoted-printable") {
            m.qp_count += 1.0;
        }
        if cd.contains("attachment") {
            m.attachment = true;
        }
        if ctype.starts_with("text")
            && cte.contains("base64")
            && (charset.is_empty() || ascii_names.iter().any(|n| charset.contains(n)))
            && !(cd.starts_with("attachment") || cd.starts_with("inline"))
        {
            m.base64_encoded_text = true;
        }
        if bad_iso(&charset) {
            m.bad_iso_charset = true;
        }
        if p.kind != PartKind::Leaf {
            continue;
        }
        let body = &msg.raw[p.body.start as usize..p.body.end as usize];
        // Whole-part figures where SpamAssassin sums over lines: a line's length counts a CRLF
        // as one byte, and `&#xHHHH;` never spans lines.
        let crlf = std::cell::OnceCell::new();
        let crlf = || *crlf.get_or_init(|| memchr::memmem::find_iter(body, b"\r\n").count());
        let mut bytes = (!cd.contains("attachment")).then_some(0usize);
        if alternative && (ctype == "text/plain" || ctype == "text/html") {
            if let Some(b) = bytes.as_mut() {
                *b += body.len() - crlf();
            }
        }
        let plain = ctype == "text/plain";
        if plain
            && !m.ascii_illegal
            && (p.charset.is_none() || charset == "us-ascii")
            && ascii_illegal(body)
        {
            m.ascii_illegal = true;
        }
        if plain && (cte.is_empty() || cte == "7bit" || cte == "8bit") {
            let subs = unicode_entities(body);
            normal_chars += body.len() - crlf() - 8 * subs;
            unicode_chars += subs;
        }
        if cte == "quoted-printable" {
            for l in line_slices(body) {
                if l.starts_with(b"SPAM: ") {
                    continue;
                }
                let len = line_len(l);
                if len > 79 {
                    m.qp_long_line = true;
                }
                qp_bytes += len;
                qp_encoded += needless_qp(l);
            }
        }
        if ctype != "application/ics" && cte == "base64" {
            for l in line_slices(body) {
                m.base64_length = m.base64_length.max(line_len(l));
            }
        }
        leaves.push((ctype.to_string(), bytes));
    }
    if qp_bytes > 0 {
        m.qp_count = qp_encoded;
    }
    if normal_chars > 0 {
        m.unicode_ratio = unicode_chars as f64 / normal_chars as f64;
    }
    if alternative {
        let (mut text, mut html) = (None, None);
        for (t, b) in leaves.iter().rev() {
            let Some(b) = b else { continue };
            if html.is_none() && t == "text/html" {
                html = Some(*b);
            } else if text.is_none() && t == "text/plain" {
                text = Some(*b);
            }
            if html.is_some() && text.is_some() {
                break;
            }
        }
        if let (Some(t), Some(h)) = (text, html) {
            if h > 0 {
                m.multipart_ratio = t as f64 / h as f64;
            }
        }
    }
    m
}

/// How many `&#xHHHH;` entities (upper-case hex) `s/&#x[0-9A-F]{4};//g` removes from a text.
fn unicode_entities(text: &[u8]) -> usize {
    let upper_hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
    let (mut n, mut from) = (0, 0);
    while let Some(at) = memchr::memchr(b'&', &text[from..]).map(|i| from + i) {
        match text.get(at..at + 8) {
            Some(e) if e.starts_with(b"&#x") && e[3..7].iter().all(upper_hex) && e[7] == b';' => {
                n += 1;
                from = at + 8;
            }
            _ => from = at + 1,
        }
    }
    n
}

/// Whether a us-ascii text has a NUL, an 8-bit byte or a CR that does not end a line (a
/// line's CRLF ending is not part of what SpamAssassin tests).
fn ascii_illegal(text: &[u8]) -> bool {
    // A NUL or an 8-bit byte is `b - 1 >= 0x7f` in wrapping arithmetic: checked a block at a
    // time without an early exit, which the compiler turns into vector code.
    let high_or_nul = text.chunks(256).any(|c| {
        c.iter()
            .fold(false, |any, &b| any | (b.wrapping_sub(1) >= 0x7f))
    });
    high_or_nul || memchr::memchr_iter(b'\r', text).any(|i| text.get(i + 1) != Some(&b'\n'))
}

/// Characters a quoted-printable line encodes that need no encoding
/// (`=(?:09|3[0-9ABCEF]|[2456][0-9A-F]|7[0-9A-E])`), less the encoded tabs and spaces that end
/// it, as MIMEEval counts them.
fn needless_qp(line: &[u8]) -> f64 {
    if !line.contains(&b'=') {
        return 0.0;
    }
    let hex = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
    let mut n = 0usize;
    let mut i = 0;
    while i + 2 < line.len() {
        if line[i] == b'=' {
            let (a, b) = (line[i + 1], line[i + 2]);
            let hit = match a {
                b'0' => b == b'9',
                b'3' => b.is_ascii_digit() || matches!(b, b'A' | b'B' | b'C' | b'E' | b'F'),
                b'2' | b'4' | b'5' | b'6' => hex(b),
                b'7' => b.is_ascii_digit() || (b'A'..=b'E').contains(&b),
                _ => false,
            };
            if hit {
                n += 1;
                i += 3;
                continue;
            }
        }
        i += 1;
    }
    if n == 0 {
        return 0.0;
    }
    // `((?:=09|=20)+)\s*$`: the encoded blanks at the end of the line.
    let mut end = line.len();
    while end > 0 && line[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    let mut start = end;
    while start >= 3 && (&line[start - 3..start] == b"=09" || &line[start - 3..start] == b"=20") {
        start -= 3;
    }
    n as f64 - ((end - start) / 3) as f64
}

/// `$charset =~ /iso-\S+-\S+\b/i && $charset !~ /iso-(?:8859-\d{1,2}|2022-(?:jp|kr))\b/`.
fn bad_iso(charset: &str) -> bool {
    use std::sync::OnceLock;
    static RE: OnceLock<(regex::Regex, regex::Regex)> = OnceLock::new();
    let (bad, good) = RE.get_or_init(|| {
        (
            regex::Regex::new(r"(?i)iso-\S+-\S+\b").expect("re"),
            regex::Regex::new(r"iso-(?:8859-\d{1,2}|2022-(?:jp|kr))\b").expect("re"),
        )
    });
    bad.is_match(charset) && !good.is_match(charset)
}

/// MIMEEval's `check_ma_non_text`: a multipart/alternative with a direct leaf child that is
/// not text (nor RTF).
fn ma_non_text(msg: &Message) -> bool {
    msg.parts.iter().any(|p| {
        p.content_type == "multipart/alternative"
            && msg.parts.iter().any(|c| {
                c.parent == Some(p.id)
                    && c.kind == PartKind::Leaf
                    && c.content_type != "multipart/related"
                    && c.content_type != "application/rtf"
                    && !c.content_type.starts_with("text/")
            })
    })
}

/// A message's public relay addresses as DNSEval lists them once per message: the untrusted
/// relays', and the external relays' (those trusted but not internal, then the untrusted),
/// each without repeats, newest first.
#[derive(Debug, Default)]
pub struct RblRelays {
    untrusted: Vec<IpAddr>,
    external: Vec<IpAddr>,
}

impl RblRelays {
    fn of(relays: &super::relays::Relays) -> RblRelays {
        fn public<'r>(rs: impl Iterator<Item = &'r super::relays::Relay>) -> Vec<IpAddr> {
            let mut out: Vec<IpAddr> = Vec::new();
            for r in rs.filter(|r| !r.ip_private) {
                if let Ok(ip) = r.ip.trim_start_matches("IPv6:").parse::<IpAddr>() {
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
            }
            out
        }
        let external = relays.trusted.iter().filter(|r| !r.internal);
        RblRelays {
            untrusted: public(relays.untrusted.iter()),
            external: public(external.chain(&relays.untrusted)),
        }
    }

    /// The addresses a `check_rbl` set asks about (`_check_rbl_backend`): none when no
    /// untrusted relay has a public address; for `-lastexternal` the first external one, for
    /// `-notfirsthop` the external ones without the oldest (when there are two or more), for
    /// `-firsttrusted` the first untrusted one, for `-untrusted` the others, and for any other
    /// set every untrusted one.
    fn for_set(&self, set: &str) -> &[IpAddr] {
        let (u, e) = (&self.untrusted[..], &self.external[..]);
        if u.is_empty() {
            u
        } else if set.ends_with("-lastexternal") {
            &e[..e.len().min(1)]
        } else if set.ends_with("-notfirsthop") {
            &e[..e.len() - usize::from(e.len() > 1)]
        } else if set.ends_with("-firsttrusted") {
            &u[..1]
        } else if set.ends_with("-untrusted") {
            &u[1..]
        } else {
            u
        }
    }
}

/// [`RblRelays::for_set`] of the message `input` reads, the lists made on first use.
fn rbl_ips<'i>(input: &'i EvalInput<'_>, set: &str) -> &'i [IpAddr] {
    input
        .rbl_relays
        .get_or_init(|| RblRelays::of(input.relays))
        .for_set(set)
}

fn rbl_listed(n: &Facts, ips: &[IpAddr], zone: &str, txt: bool, subtest: &Subtest) -> bool {
    ips.iter().any(|&ip| {
        let q = lists::ip_query(ip, zone);
        if txt {
            n.txt
                .get(&q)
                .is_some_and(|t| t.iter().any(|x| subtest.matches_text(x)))
        } else {
            n.a.get(&q).is_some_and(|a| subtest.any(a))
        }
    })
}

fn auth_test(r: &auth::Results, t: AuthTest) -> bool {
    match t {
        AuthTest::Spf(o) => r.spf == o,
        AuthTest::SpfHelo(o) => r.spf_helo == o,
        AuthTest::DkimDependable => true,
        AuthTest::DkimSigned => !r.dkim.is_empty(),
        AuthTest::DkimValid => r.dkim_valid(),
        AuthTest::DkimValidAuthor => r.dkim_valid_author(),
        AuthTest::DmarcPass => r.dmarc_policy.is_some() && r.dmarc == auth::Outcome::Pass,
        AuthTest::DmarcFail(p) => r.dmarc_policy == Some(p) && r.dmarc == auth::Outcome::Fail,
        AuthTest::DmarcMissing => r.dmarc_policy.is_none(),
        AuthTest::ArcSigned => r.arc != auth::Outcome::None,
        AuthTest::ArcValid => r.arc == auth::Outcome::Pass,
    }
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map(utf8_lossy_owned).unwrap_or_default()
}

/// HeaderEval's `subject_is_all_caps`.
fn subject_all_caps(h: &Headers) -> bool {
    let s = text(header_value(h, "Subject", None));
    let mut s = s.trim();
    // `s/^(?:(?:Re|Fwd|Fw|Aw|Antwort|WG|SV|VB|VS|VL):\s*)+//i`
    loop {
        let b = s.as_bytes();
        let Some(p) = [
            "re", "fwd", "fw", "aw", "antwort", "wg", "sv", "vb", "vs", "vl",
        ]
        .iter()
        .find(|p| {
            b.len() > p.len()
                && b[p.len()] == b':'
                && b[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        }) else {
            break;
        };
        s = s[p.len() + 1..].trim_start();
    }
    if !s.chars().any(char::is_whitespace) || s.chars().count() < 10 {
        return false;
    }
    let letters: String = s.chars().filter(char::is_ascii_alphabetic).collect();
    let raw = text(header_value(h, "Subject:raw", None)).to_ascii_lowercase();
    if likely_caps_charset(&raw) {
        return false;
    }
    !letters.is_empty() && letters == letters.to_ascii_uppercase()
}

/// SpamAssassin's CHARSETS_LIKELY_TO_FP_AS_CAPS (`[-_a-z0-9]*(?:NAMES)[-_a-z0-9]*`): charsets
/// whose text reads as capitals to an ASCII count.
const LIKELY_CAPS: &[&str] = &[
    "koi",
    "jp",
    "jis",
    "euc",
    "gb",
    "big5",
    "isoir",
    "cp1251",
    "windows-1251",
    "georgianps",
    "pt154",
    "tis",
];

/// Whether a (lower-case) charset name is one of [`LIKELY_CAPS`]: a name of `[-_a-z0-9]`
/// with one of them anywhere inside.
fn caps_charset(cs: &str) -> bool {
    cs.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && LIKELY_CAPS.iter().any(|n| cs.contains(n))
}

/// `=?CHARSET?` with one of SpamAssassin's CHARSETS_LIKELY_TO_FP_AS_CAPS.
fn likely_caps_charset(raw_lower: &str) -> bool {
    let mut rest = raw_lower;
    while let Some(i) = rest.find("=?") {
        let after = &rest[i + 2..];
        let cs_end = after.find('?').unwrap_or(after.len());
        let cs = &after[..cs_end];
        if cs_end < after.len() && caps_charset(cs) {
            return true;
        }
        rest = after;
    }
    false
}

/// HeaderEval's `check_for_to_in_subject`.
fn to_in_subject(h: &Headers, user: bool) -> bool {
    let to = text(header_value(h, "To:addr", None));
    let to = to.trim_end_matches('\n');
    if to.is_empty() {
        return false;
    }
    let subject = text(header_value(h, "Subject", None));
    let subject = subject.trim_end_matches('\n');
    let sl = subject.to_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    if !user {
        // `/\b\Q$full_to\E\b/i`
        let tl = to.to_lowercase();
        let mut from = 0;
        while let Some(i) = sl[from..].find(&tl) {
            let s = from + i;
            let e = s + tl.len();
            let before_ok = !word(tl.chars().next()) || !word(sl[..s].chars().next_back());
            let after_ok = !word(tl.chars().next_back()) || !word(sl[e..].chars().next());
            if before_ok && after_ok {
                return true;
            }
            from = s + tl.len().max(1);
            if from > sl.len() {
                break;
            }
        }
        return false;
    }
    let local = to.split('@').next().unwrap_or("");
    if local.is_empty() {
        return false;
    }
    let ll = local.to_lowercase();
    // (?:re|fw):\s*(?:\w+\s+)?TO$
    for p in ["re:", "fw:"] {
        if let Some(rest) = sl.strip_prefix(p) {
            let rest = rest.trim_start();
            if rest == ll {
                return true;
            }
            if let Some((w, tail)) = rest.split_once(char::is_whitespace) {
                if !w.is_empty()
                    && w.chars().all(|c| c.is_alphanumeric() || c == '_')
                    && tail.trim_start() == ll
                {
                    return true;
                }
            }
        }
    }
    // (?-i:TO)\s*[,:;!?-](?:$|\s)
    if let Some(rest) = subject.strip_prefix(local) {
        let rest = rest.trim_start();
        let mut c = rest.chars();
        if matches!(c.next(), Some(',' | ':' | ';' | '!' | '?' | '-'))
            && c.next().is_none_or(char::is_whitespace)
        {
            return true;
        }
    }
    // TO$ (anchored at the start: the whole subject)
    if sl == ll {
        return true;
    }
    // ,\s*TO[,:;!?-]$
    if let Some(rest) = sl.strip_prefix(',') {
        let rest = rest.trim_start();
        if let Some(tail) = rest.strip_prefix(ll.as_str()) {
            if matches!(tail, "," | ":" | ";" | "!" | "?" | "-") {
                return true;
            }
        }
    }
    false
}

/// HeaderEval's `check_illegal_chars`.
fn illegal_chars(h: &Headers, header: &str, ratio: f64, count: usize) -> bool {
    let req = if header.ends_with(":raw") {
        header.to_string()
    } else {
        format!("{header}:raw")
    };
    let Some(v) = header_value(h, &req, None) else {
        return false;
    };
    if !v.iter().any(|b| !b.is_ascii_whitespace()) {
        return false;
    }
    let control = |b: &u8| matches!(b, 0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f);
    if v.iter().any(|b| !b.is_ascii()) && std::str::from_utf8(&v).is_ok() && !v.iter().any(control)
    {
        return false; // valid UTF-8 without controls
    }
    let mut illegal = v.iter().filter(|b| control(b) || **b >= 0x7f).count();
    if illegal > 0 && req.eq_ignore_ascii_case("subject:raw") {
        let exempt = v.iter().filter(|b| matches!(b, 0xa2 | 0xa3 | 0xae)).count();
        if exempt == 1 {
            illegal -= 1;
        }
    }
    (illegal as f64 / v.len() as f64) >= ratio && illegal >= count
}

/// `check_for_from_domain_in_received_headers`: `None` when the From address does not
/// mention the domain (the rule then does not hit either way), else whether a relay of the
/// domain handed over to a host of the domain.
fn from_domain_in_received(
    input: &EvalInput<'_>,
    mentions: &regex::Regex,
    relayed: &regex::Regex,
) -> Option<bool> {
    let from = header_value(input.headers, "From:addr", input.mail_from)?;
    if !mentions.is_match(&utf8_lossy(&from)) {
        return None;
    }
    let r = input.relays;
    let all = format!(
        "{}\n{}",
        r.pseudo_header("X-Spam-Relays-Trusted").unwrap_or_default(),
        r.pseudo_header("X-Spam-Relays-Untrusted")
            .unwrap_or_default()
    );
    Some(relayed.is_match(&all))
}

/// The faraway charset tests; never with `ok_locales` unset or `all`.
fn faraway(w: Faraway, input: &EvalInput<'_>) -> bool {
    use super::locales::{all, charset_ok, mostly_high_bits};
    let l = input.ok_locales;
    if l.is_empty() || all(l) {
        return false;
    }
    match w {
        Faraway::Body => {
            let Some(ct) = header_value(input.headers, "Content-Type", None) else {
                return false;
            };
            let ct = utf8_lossy(&ct);
            static CS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
                regex::Regex::new(r#"(?i)charset="([^"]+)"|charset='([^']+)'|charset=(\S+)"#)
                    .expect("a valid pattern")
            });
            let cs = CS
                .captures(&ct)
                .and_then(|c| c.get(1).or(c.get(2)).or(c.get(3)))
                .map(|m| m.as_str().to_string());
            let Some(cs) = cs else { return false };
            if charset_ok(&cs, l) {
                return false;
            }
            let lines = body_of(input);
            mostly_high_bits(&lines.join(&b"\n"[..]))
        }
        Faraway::Headers => {
            static WORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
                regex::Regex::new(r"=\?(.+?)\?.\?.*?\?=").expect("a valid pattern")
            });
            let word = &*WORD;
            ["From:raw", "Subject:raw"].iter().any(|req| {
                header_value(input.headers, req, None).is_some_and(|v| {
                    word.captures_iter(&utf8_lossy(&v))
                        .any(|c| !charset_ok(&c[1], l))
                })
            })
        }
        Faraway::Html => {
            static META: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
                regex::Regex::new(
                    r#"(?is)<meta\b[^>]*http-equiv\s*=\s*["']?content-type[^>]*content\s*=\s*["'][^"']*\bcharset\s*=\s*([^"'\s;>]+)"#,
                )
                .expect("a valid pattern")
            });
            let meta = &*META;
            input
                .msg
                .parts
                .iter()
                .filter(|p| p.content_type == "text/html")
                .any(|p| {
                    let Some(html) = input.msg.decoded(p.id) else {
                        return false;
                    };
                    let text = utf8_lossy(html);
                    let (mut ok, mut bad) = (0, 0);
                    for c in meta.captures_iter(&text) {
                        if charset_ok(&c[1], l) {
                            ok += 1;
                        } else {
                            bad += 1;
                        }
                    }
                    bad > 0 && bad >= ok
                })
        }
    }
}

/// The registrable domain of a host name (`trim_domain`), itself when the suffix is unknown.
fn trim_domain(d: &str) -> String {
    psl::domain_str(d).unwrap_or(d).to_string()
}

fn envelope_test(t: EnvTest, input: &EvalInput<'_>) -> bool {
    let get = |req: &str| {
        header_value(input.headers, req, input.mail_from)
            .map(|v| utf8_lossy(&v).trim_end_matches('\n').to_string())
            .unwrap_or_default()
    };
    let env = get("EnvelopeFrom:addr");
    match t {
        EnvTest::MatchesFrom => env.to_lowercase() == get("From:addr").to_lowercase(),
        EnvTest::Ratware => {
            let to = get("To:addr");
            if env.is_empty() || to.is_empty() {
                return false;
            }
            // `/^SRS\d[=+-]/i`, read as bytes: the sender may hold any character after `SRS`
            // (a byte index into a `str` there once panicked on an 8-bit Return-Path).
            if let [s, r, s2, d, sep, ..] = env.as_bytes() {
                if [*s, *r, *s2].eq_ignore_ascii_case(b"SRS")
                    && d.is_ascii_digit()
                    && matches!(sep, b'=' | b'+' | b'-')
                {
                    return false;
                }
            }
            let Some((user, dom)) = to.split_once('@') else {
                return false;
            };
            if user.is_empty() || dom.is_empty() || dom.contains('@') {
                return false;
            }
            let dom = trim_domain(dom);
            let valid =
                dom.contains('.') && psl::suffix(dom.as_bytes()).is_some_and(|s| s.is_known());
            if !valid {
                return false;
            }
            domain_dot_user(&env, &dom, user)
        }
        EnvTest::DifferentDomains => {
            let second_level = |a: &str| -> String {
                let d = a.rsplit_once('@').map_or("", |(_, d)| d);
                if d.contains('@') {
                    return String::new();
                }
                // `s/^.+\.([^\.]+\.[^\.]+)$/$1/`
                let labels: Vec<&str> = d.split('.').collect();
                if labels.len() >= 3 && !labels[..labels.len() - 2].join(".").is_empty() {
                    labels[labels.len() - 2..].join(".")
                } else {
                    d.to_string()
                }
            };
            let (f, e) = (second_level(&get("From:addr")), second_level(&env));
            !f.is_empty() && !e.is_empty() && !f.eq_ignore_ascii_case(&e)
        }
        EnvTest::MatchesRelay => {
            let Some((_, dom)) = env.rsplit_once('@') else {
                return false;
            };
            if env.is_empty() || !dom.contains('.') {
                return false;
            }
            let adrd = trim_domain(&dom.to_lowercase());
            let r = input.relays;
            let relays: Vec<&super::relays::Relay> = match r.untrusted.first() {
                Some(first) => vec![first],
                None => r.trusted.iter().collect(),
            };
            relays
                .iter()
                .filter(|x| !x.rdns.is_empty())
                .any(|x| trim_domain(&x.lc_rdns()) == adrd)
        }
    }
}

fn image_test(t: &ImageTest, input: &EvalInput<'_>) -> bool {
    use super::images::{in_range, ImageInfo};
    let info = input.images.get_or_init(|| ImageInfo::of(input.msg));
    match t {
        ImageTest::Count { ty, min, max } => in_range(info.count(ty) as f64, *min, *max, false),
        ImageTest::Pixels { ty, min, max } => in_range(info.pixels(ty) as f64, *min, *max, false),
        ImageTest::TextRatio { ty, min, max } => {
            let pixels = info.pixels(ty);
            let lines = body_of(input);
            let text: usize = lines.iter().map(Vec::len).sum();
            text > 0 && pixels > 0 && in_range(text as f64 / pixels as f64, *min, Some(*max), true)
        }
        ImageTest::SizeExact { ty, height, width } => info.has_size(ty, *height, *width),
        ImageTest::SizeRange {
            ty,
            min,
            max_h,
            max_w,
        } => info.in_size_range(ty, *min, *max_h, *max_w),
        ImageTest::Named(name) => info.names().any(|n| n == name),
        ImageTest::NameRegex(re) => info
            .names()
            .any(|n| re.is_match(n.as_bytes()).unwrap_or(false)),
    }
}

/// `/\b\Qdom\E.\Quser\E@/i`: the domain (at a word start), any one character, the user
/// and `@`, ASCII case ignored.
fn domain_dot_user(text: &str, dom: &str, user: &str) -> bool {
    let (t, dom, user) = (
        text.to_ascii_lowercase(),
        dom.to_ascii_lowercase(),
        format!("{}@", user.to_ascii_lowercase()),
    );
    let word = |c: char| c.is_alphanumeric() || c == '_';
    t.match_indices(&dom).any(|(at, _)| {
        let before = t[..at].chars().next_back().is_some_and(word);
        let starts_word = dom.chars().next().is_some_and(word);
        let rest = &t[at + dom.len()..];
        let mut chars = rest.chars();
        before != starts_word
            && chars
                .next()
                .is_some_and(|c| c != '\n' && chars.as_str().starts_with(&user))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `case_bytes` counts every byte value as the `u8` predicates do.
    #[test]
    fn case_bytes_count_as_the_byte_predicates() {
        let all: Vec<u8> = (0..=255u8).chain(b"aZ09 zA".iter().copied()).collect();
        let want_lower = all
            .iter()
            .filter(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .count();
        let want_upper = all.iter().filter(|b| b.is_ascii_uppercase()).count();
        assert_eq!(case_bytes(&all), (want_lower, want_upper));
        assert_eq!(case_bytes(b""), (0, 0));
    }

    #[test]
    fn ratware_name_id_reads_as_its_patterns() {
        use rand::{Rng, SeedableRng};
        let id = regex::Regex::new(r"<[A-Z]{28}\.([^>]+?)>").expect("valid");
        let alphabet = [
            "<", ">", ".", "A", "B", "a", "\"", " ", "\n", "x", "é", "\u{3000}",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: usize| rng.gen_range(0..n);
        let (mut ids, mut names) = (0, 0);
        for _ in 0..20_000 {
            let caps: String = (0..28)
                .map(|_| if next(20) == 0 { 'b' } else { 'Q' })
                .collect();
            let mut mid = String::new();
            for _ in 0..next(4) {
                match next(4) {
                    0 | 1 => mid.push_str(&format!("<{caps}.")),
                    2 => mid.push_str("id>"),
                    _ => mid.push_str(alphabet[next(alphabet.len())]),
                }
                for _ in 0..next(4) {
                    mid.push_str(alphabet[next(alphabet.len())]);
                }
            }
            let want = id.captures(&mid).and_then(|c| c.get(1)).map(|m| m.as_str());
            assert_eq!(ratware_id_right(&mid), want, "{mid:?}");
            ids += usize::from(want.is_some());
            let addr = ["x.y", "a<b", "x", "\"q"][next(4)];
            let mut from = String::new();
            for _ in 0..next(6) {
                match next(5) {
                    0 | 1 => from.push_str(&format!("<{addr}>")),
                    2 => from.push_str("\"Name\""),
                    3 => from.push_str([" ", "\t", "\u{3000}", ""][next(4)]),
                    _ => from.push_str(alphabet[next(alphabet.len())]),
                }
            }
            let re = regex::Regex::new(&format!("\"[^\"]+\"\\s*<{}>", regex::escape(addr)))
                .expect("valid");
            assert_eq!(
                quoted_name_before(&from, addr),
                re.is_match(&from),
                "{from:?} {addr:?}"
            );
            names += usize::from(re.is_match(&from));
        }
        // Both outcomes were drawn often enough to compare.
        assert!(ids > 500 && names > 500, "{ids} ids, {names} names");
    }

    #[test]
    fn blank_runs_keep_twenty_lines_as_the_parser_does() {
        let head = b"Subject: x\n\n";
        let msg = |body: &str| [&head[..], body.as_bytes()].concat();
        let count = |raw: &[u8]| {
            let cut = squeeze_blank_runs(raw, head.len()).unwrap_or_else(|| raw.to_vec());
            cut[head.len()..].iter().filter(|&&b| b == b'\n').count()
        };
        // 25 blank lines between two words: 20 kept; 20 or fewer: left as they are.
        assert_eq!(count(&msg(&format!("a\n{}b\n", "\n".repeat(25)))), 22);
        assert!(
            squeeze_blank_runs(&msg(&format!("a\n{}b\n", " \n".repeat(20))), head.len()).is_none()
        );
        // A run at the start of the body keeps 21, one at its end 20.
        assert_eq!(count(&msg(&format!("{}b\n", "\n".repeat(30)))), 22);
        assert_eq!(count(&msg(&format!("a\n{}", "\t\n".repeat(30)))), 21);
    }

    #[test]
    fn stock_tips_count_distinct_field_names() {
        let msg = |body: &str| {
            Message::parse(
                format!("Subject: x\nContent-Type: text/plain\n\n{body}")
                    .into_bytes()
                    .into(),
            )
        };
        let tip = "Company: Example Corp\nSymbol: EXMC\n  Current Price : $0.12\nSymbol: again\n";
        assert_eq!(stock_info(&msg(tip)), 3);
        // A name needs something after its colon, which Perl's `\s*\S` (as `regex`'s) finds
        // on a later line too.
        assert_eq!(stock_info(&msg("Sector:   \n")), 0);
        assert_eq!(stock_info(&msg("Symbol:\nnext line\n")), 1);
        assert_eq!(stock_info(&msg("Dear friend: hello\n")), 0);
    }

    #[test]
    fn relays_matched_as_welcomelist_from_rcvd_names_them() {
        let relay = |ip: &str, rdns: &str| super::super::relays::Relay {
            ip: ip.into(),
            rdns: rdns.into(),
            ..Default::default()
        };
        let r = relay("192.0.2.77", "Mail.Example.COM");
        for (want, hit) in [
            ("example.com", true),
            ("mail.example.com", true),
            ("ample.com", false),
            ("[192.0.2.77]", true),
            ("[192.0.2.7]", false),
            ("[192.0.2]", true),
            ("[192.0.2.]", true),
            ("[192.0]", true),
            ("[192.0.20]", false),
            ("[192.0.2.0/24]", true),
            ("[192.0.2.0]/24", true),
            ("[192.0.2.0/30]", false),
            ("[192.0.2.64]/26", true),
            ("[2001:db8::/32]", false),
            ("[192.0.2.77", false),
            ("[bogus]", false),
        ] {
            assert_eq!(relay_matches(want, &r), hit, "{want}");
        }
        let v6 = relay("2001:db8:1234::5", "");
        assert!(relay_matches("[2001:db8:1234::]/48", &v6));
        assert!(relay_matches("[2001:db8:1234::/48]", &v6));
        assert!(!relay_matches("[2001:db8:1235::]/48", &v6));
        assert!(!relay_matches("[192.0.2.0/24]", &v6));
        // No address recorded: no bracketed entry matches.
        assert!(!relay_matches("[0.0.0.0/0]", &relay("", "x.example.com")));
        assert!(relay_matches("[0.0.0.0/0]", &relay("203.0.113.1", "")));
        assert!(!relay_matches("[10.0.0.0/33]", &relay("10.0.0.1", "")));
    }

    /// The one-pass figures for ASCII lines and whole parts are those of SpamAssassin's
    /// line-by-line reading, over random lines of white space, letters, digits, CRs, NULs,
    /// entities and base64 words.
    #[test]
    fn whole_text_figures_match_the_line_by_line_ones() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let b64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx";
        let pieces: &[&[u8]] = &[
            b" ",
            b"\t",
            b"\x0b",
            b"\r",
            b"\n",
            b"\r\n",
            b"\0",
            b"a",
            b"Q",
            b"7",
            b"&#x00E9;",
            b"&#x00e9;",
            b"&#x1F60",
            b"&",
            b"=",
            b"\x85",
            b64.as_bytes(),
        ];
        for _ in 0..5_000 {
            let text: Vec<u8> = (0..rng.gen_range(0..24))
                .flat_map(|_| pieces[rng.gen_range(0..pieces.len())].iter().copied())
                .collect();
            if text.is_ascii() {
                let line = std::str::from_utf8(&text).unwrap();
                assert_eq!(ascii_case_counts(&text), case_counts(line), "{line:?}");
            }
            // Line by line, as SpamAssassin reads a part.
            let (mut kept, mut subs, mut illegal) = (0, 0, false);
            for l in line_slices(&text) {
                let content = l
                    .strip_suffix(b"\r\n")
                    .or_else(|| l.strip_suffix(b"\n"))
                    .unwrap_or(l);
                illegal |= content.iter().any(|&b| b == 0 || b == b'\r' || b >= 0x80);
                let mut i = 0;
                while i < content.len() {
                    let e = &content[i..];
                    if e.len() >= 8
                        && e.starts_with(b"&#x")
                        && e[3..7]
                            .iter()
                            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                        && e[7] == b';'
                    {
                        subs += 1;
                        i += 8;
                    } else {
                        kept += 1;
                        i += 1;
                    }
                }
                kept += usize::from(l.ends_with(b"\n"));
            }
            let whole = unicode_entities(&text);
            let crlf = memchr::memmem::find_iter(&text, b"\r\n").count();
            assert_eq!(
                (whole, text.len() - crlf - 8 * whole),
                (subs, kept),
                "{text:?}"
            );
            assert_eq!(ascii_illegal(&text), illegal, "{text:?}");
        }
    }

    /// One NUL, 8-bit byte or lone CR anywhere in a long clean text is found, whichever block
    /// of the vector check it falls in; a CRLF is not.
    #[test]
    fn ascii_illegal_anywhere_in_a_long_text() {
        let clean: Vec<u8> = (0..1_000u32)
            .map(|i| {
                if i % 61 == 60 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        assert!(!ascii_illegal(&clean));
        for at in 0..clean.len() {
            for bad in [&b"\0"[..], b"\x80", b"\xff", b"\r", b"\rx"] {
                if bad == b"\r" && clean[at] == b'\n' {
                    continue; // that makes a CRLF
                }
                let mut t = clean.clone();
                t.splice(at..at, bad.iter().copied());
                assert!(ascii_illegal(&t), "{bad:?} at {at}");
            }
            let mut t = clean.clone();
            t.splice(at..at, *b"\r\n");
            assert!(!ascii_illegal(&t), "CRLF at {at}");
        }
    }

    #[test]
    fn ratware_envelope_shape() {
        assert!(domain_dot_user(
            "example.com-bob@spam.test",
            "example.com",
            "bob"
        ));
        assert!(domain_dot_user("Example.COM.Bob@x", "example.com", "bob"));
        assert!(!domain_dot_user(
            "myexample.com-bob@x",
            "example.com",
            "bob"
        ));
        assert!(!domain_dot_user("example.combob@x", "example.com", "bob"));
        assert!(!domain_dot_user(
            "example.com-bobby@x",
            "example.com",
            "bob"
        ));
    }

    #[test]
    fn uri_hosts_of_any_text_are_read_without_panicking() {
        // A relative link whose seventh byte falls inside a character (a gateway once deferred
        // such a message: the content stage panicked).
        let raw = "From: a@b.example\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
                   <a href=\"./廣告信.files/filelist.xml\">x</a> <a href=\"http://www.Evil.com/x\">y</a>\r\n";
        let msg = Message::parse(bytes::Bytes::from(raw));
        let mut list = HashMap::new();
        list.insert("evil.com".to_string(), true);
        let hosts = listed_hosts(&super::super::view::uris(&msg, &Default::default()));
        assert!(uri_host_listed(&hosts, &list));
        list.insert("www.evil.com".to_string(), false);
        assert!(!uri_host_listed(&hosts, &list));
    }

    #[test]
    fn listed_hosts_are_looked_up_as_spamassassin_does() {
        let names = |host: &str, ip: bool| {
            let h = ListedHost {
                host: host.to_string(),
                ip,
            };
            h.names().map(str::to_string).collect::<Vec<_>>()
        };
        assert_eq!(names("10.1.2.3", true), ["10.1.2.3"]);
        assert_eq!(
            names("www.evil.com", false),
            ["www.evil.com", "evil.com", "com"]
        );
        // The eleven most general names of a deeper one.
        let deep = "a.b.c.d.e.f.g.h.i.j.k.l.com";
        let n = names(deep, false);
        assert_eq!(n.len(), 11);
        assert_eq!(
            (n[0].as_str(), n[10].as_str()),
            ("c.d.e.f.g.h.i.j.k.l.com", "com")
        );
        // Names under no known public suffix, and bare suffixes (a relative link `top`
        // becomes `http://top`, and `http://www.top.com` as Firefox reads it), are no hosts;
        // each host once.
        let msg = Message::parse(bytes::Bytes::from(
            "From: a@b.example\r\nContent-Type: text/html\r\n\r\n<a href=\"top\">t</a> \
             http://x.invalidtld/ http://www.evil.com/a http://WWW.evil.com/b\r\n",
        ));
        let hosts = listed_hosts(&super::super::view::uris(&msg, &Default::default()));
        assert_eq!(
            hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
            ["www.evil.com", "www.top.com"]
        );
    }

    #[test]
    fn needless_quoted_printable() {
        // =3D is '=' (needs encoding); =41 is 'A' (does not); trailing =20 are forgiven.
        assert_eq!(needless_qp(b"a=3Db=41c=20=20\n"), 1.0);
        assert_eq!(needless_qp(b"caf=C3=A9\n"), 0.0);
        assert_eq!(needless_qp(b"=41=42\n"), 2.0);
        assert_eq!(needless_qp(b"plain\n"), 0.0);
    }

    #[test]
    fn argument_lists() {
        assert_eq!(
            args("'zen-lastexternal', 'zen.spamhaus.org.'"),
            vec!["zen-lastexternal", "zen.spamhaus.org."]
        );
        assert_eq!(args("'Subject', 0.05, 1"), vec!["Subject", "0.05", "1"]);
        assert!(args("").is_empty());
    }

    #[test]
    fn calls() {
        let mut defs = HashMap::new();
        defs.insert(
            "URIBL_BLACK".to_string(),
            super::super::Eval {
                scope: "urirhssub".into(),
                function: "urirhssub".into(),
                args: "multi.uribl.com.        A   2".into(),
            },
        );
        match Call::parse("check_uridnsbl", "'URIBL_BLACK'", &defs) {
            Some(Call::UriBl { zone, subtest }) => {
                assert_eq!(zone, "multi.uribl.com");
                assert_eq!(subtest, Subtest::Mask(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(Call::parse("check_uridnsbl", "'NOPE'", &defs).is_none());
        assert!(Call::parse("check_razor2", "", &defs).is_none());
        assert!(matches!(
            Call::parse("check_rbl_sub", "'zen', '127.0.0.2'", &defs),
            Some(Call::RblSub { .. })
        ));
    }

    /// Relays newest first: 198.51.100.9 handed the message over, 203.0.113.7 before it, then
    /// 10.1.2.3 (private) and 192.0.2.5.
    fn analysed(cf: &str) -> (crate::rules::relays::Relays, DnsPlan) {
        use crate::rules::{load::load_str, relays, view::Headers};
        let text = [
            ("relay.example.org", "198.51.100.9", "mx.example.org"),
            ("out.example.net", "203.0.113.7", "relay.example.org"),
            ("lan.example.net", "10.1.2.3", "out.example.net"),
            ("pc.example.net", "192.0.2.5", "lan.example.net"),
        ]
        .iter()
        .map(|(from, ip, by)| {
            format!("Received: from {from} ({from} [{ip}]) by {by} with ESMTP id 1; Sun, 29 Nov 2026 07:00:00 +0000\r\n")
        })
        .collect::<String>()
            + "Subject: x\r\n\r\nbody\r\n";
        let msg = Message::parse(bytes::Bytes::from(text));
        let set = load_str(cf, "local.cf");
        let r = relays::analyze_with(
            &Headers::of_part(&msg, 0),
            None,
            &set.networks,
            &[] as &[&str],
        );
        let plan = DnsPlan {
            networks: set.networks,
            ..DnsPlan::default()
        };
        (r, plan)
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn each_set_reads_the_relays_dnseval_gives_it() {
        let (r, plan) = analysed("");
        let all = ["198.51.100.9", "203.0.113.7", "192.0.2.5"];
        assert_eq!(RblRelays::of(&r).for_set("zen"), ips(&all));
        assert_eq!(
            RblRelays::of(&r).for_set("zen-lastexternal"),
            ips(&all[..1])
        );
        assert_eq!(
            RblRelays::of(&r).for_set("zen-firsttrusted"),
            ips(&all[..1])
        );
        assert_eq!(RblRelays::of(&r).for_set("zen-untrusted"), ips(&all[1..]));
        assert_eq!(RblRelays::of(&r).for_set("pdl-notfirsthop"), ips(&all[..2]));
        assert_eq!(
            plan.last_external(&ips(&["127.0.0.1", "198.51.100.9"])),
            Some(1)
        );

        // Our relay trusted and internal: the lists start at the one before it.
        let (r, plan) = analysed("trusted_networks 198.51.100.9\n");
        let rest = ["203.0.113.7", "192.0.2.5"];
        assert_eq!(RblRelays::of(&r).for_set("zen"), ips(&rest));
        assert_eq!(
            RblRelays::of(&r).for_set("zen-lastexternal"),
            ips(&rest[..1])
        );
        assert_eq!(plan.last_external(&ips(&all)), Some(1));

        // Trusted but not internal: still external, so the last-external set reads it, while
        // the full sets read only the untrusted relays.
        let (r, plan) = analysed("trusted_networks 198.51.100.9\ninternal_networks 127.0.0.0/8\n");
        assert_eq!(RblRelays::of(&r).for_set("zen"), ips(&rest));
        assert_eq!(
            RblRelays::of(&r).for_set("zen-lastexternal"),
            ips(&all[..1])
        );
        assert_eq!(plan.last_external(&ips(&all)), Some(0));

        // Every relay trusted: no lookups at all.
        let (r, _) = analysed("trusted_networks 0/0\n");
        assert!(
            RblRelays::of(&r).for_set("zen-lastexternal").is_empty()
                && RblRelays::of(&r).for_set("zen").is_empty()
        );
    }
}
