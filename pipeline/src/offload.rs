//! The AV and OCR stages: work handed from a shard to worker pools, and the shard woken when
//! it is done.
//!
//! libclamav and Tesseract block for milliseconds to seconds; a shard must not. So the chain
//! [`submits`](crate::stages::Chain::submit) a message to both pools at once (they run side by
//! side), and the session awaits the [`Pending`] tickets with a deadline per stage. A full queue
//! fails at once and the message gets `451 4.3.0`: a gateway under more load than its
//! scanners can take defers mail rather than queueing it without bound. `mxgate scan` waits on
//! the same tickets synchronously.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxgate_core::config::Config;
use mxgate_core::mime::Message;
use mxgate_core::pool::{self, Abandoned, Saturated, Ticket};
use mxgate_scanners::av::{self, blocklist::Blocklist, clam, AvEngine};

/// What the AV stage does with a message carrying a virus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirusAction {
    /// `554 5.7.1` after DATA.
    Reject,
    /// Written to the quarantine folder, accepted, not relayed.
    Quarantine,
    /// Accepted and discarded.
    Drop,
    /// Relayed with an `X-Virus-Found` header.
    Tag,
}

/// The AV scan of one message, as a worker finished it.
#[derive(Debug, Clone, Default)]
pub struct AvDone {
    /// What the engines found.
    pub report: av::Report,
    /// Where the message was quarantined (the worker writes it, off the shard).
    pub quarantined: Option<PathBuf>,
    /// Why quarantining failed, when it did.
    pub quarantine_error: Option<String>,
}

/// The anti-virus stage: the engines, and the pool they run on.
pub struct AvStage {
    pool: pool::Pool<Bytes, AvDone>,
    /// Longest wait for a verdict.
    pub timeout: Duration,
    /// What to do with a virus.
    pub action: VirusAction,
    /// Whether an incomplete scan counts as a virus.
    pub limits_block: bool,
    /// Report what would be done without writing to the quarantine (`mxgate scan`).
    pub dry_run: bool,
}

impl AvStage {
    /// Builds the engines (compiling the signatures: seconds with the official databases; the
    /// caller is off the shards) and starts the pool.
    pub fn new(cfg: &Config, dry_run: bool) -> anyhow::Result<AvStage> {
        let a = &cfg.av;
        let settings = clam_settings(a);
        let clamav = Arc::new(clam::ClamAv::new(settings)?);
        if a.reload_check_secs > 0 {
            clamav.watch(Duration::from_secs(a.reload_check_secs), |r| match r {
                Ok(n) => tracing::info!(signatures = n, "av: signatures changed, engine reloaded"),
                Err(e) => tracing::error!("av: reload failed, the running engine stays: {e}"),
            })?;
        }
        let mut engines: Vec<Arc<dyn AvEngine>> = vec![clamav.clone()];
        // The pool's closure owns the engines (the watcher holds only a weak reference).
        if !a.blocklist_dir.is_empty() {
            let list = Blocklist::load_dir(Path::new(&a.blocklist_dir))?;
            if !list.is_empty() {
                tracing::info!(digests = list.len(), dir = %a.blocklist_dir, "av: digest blocklist loaded");
                engines.push(Arc::new(list));
            }
        }
        let engines = Arc::new(av::Engines::new(engines));
        let action = match a.action.as_str() {
            "quarantine" => VirusAction::Quarantine,
            "drop" => VirusAction::Drop,
            "tag" => VirusAction::Tag,
            _ => VirusAction::Reject,
        };
        let qdir = PathBuf::from(&a.quarantine_dir);
        let write_quarantine = action == VirusAction::Quarantine && !dry_run;
        let cpus = a.cpus.clone();
        let pool = pool::Pool::new(
            "mxgate-av",
            a.workers,
            a.queue,
            move |_| {
                pool::pin_current_thread(&cpus);
            },
            move |_: &mut (), body: Bytes| {
                let msg = Message::parse(body);
                let report = engines.scan_message(&msg);
                let mut done = AvDone {
                    report,
                    ..AvDone::default()
                };
                if write_quarantine && !done.report.viruses.is_empty() {
                    match quarantine(&qdir, &msg.raw) {
                        Ok(p) => done.quarantined = Some(p),
                        Err(e) => done.quarantine_error = Some(e.to_string()),
                    }
                }
                done
            },
        )?;
        tracing::info!(
            signatures = clamav.signatures(),
            libclamav = %clam::version(),
            workers = a.workers,
            "av: ready"
        );
        Ok(AvStage {
            pool,
            timeout: Duration::from_secs(a.timeout_secs),
            action,
            limits_block: a.limits_block,
            dry_run,
        })
    }

    fn submit(&self, body: &Bytes) -> Result<Ticket<AvDone>, Saturated> {
        self.pool.submit(body.clone())
    }
}

/// The libclamav engine settings of an `[av]` section.
pub fn clam_settings(a: &mxgate_core::config::Av) -> clam::Settings {
    clam::Settings {
        signatures: a.signatures.iter().map(PathBuf::from).collect(),
        builtin: a.builtin_signatures,
        cache: true,
        tmpdir: (!a.tmpdir.is_empty()).then(|| PathBuf::from(&a.tmpdir)),
        limits: av::Limits {
            max_filesize: a.max_filesize,
            max_scansize: a.max_scansize,
            max_recursion: a.max_recursion,
            max_files: a.max_files,
            ..av::Limits::default()
        },
        options: av::ScanOptions {
            alert_macros: a.alert_macros,
            alert_encrypted: a.alert_encrypted,
            alert_exceeds_max: true,
            alert_broken: a.alert_broken,
            phishing: a.phishing,
            image_fuzzy_hash: a.image_fuzzy_hash,
        },
        reload: if a.reload == "low-memory" {
            clam::Reload::LowMemory
        } else {
            clam::Reload::Concurrent
        },
    }
}

/// Writes a message into the quarantine folder under a unique name (write, fsync, rename), so
/// a file there is always whole.
fn quarantine(dir: &Path, raw: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.{:06}.{:016x}.eml",
        now.as_secs(),
        now.subsec_micros(),
        xxhash_rust::xxh3::xxh3_64(raw)
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(raw)?;
    f.sync_all()?;
    drop(f);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The OCR pool settings of an `[ocr]` section.
pub fn ocr_config(o: &mxgate_core::config::Ocr) -> mxgate_ocr::Config {
    mxgate_ocr::Config {
        workers: o.workers,
        cpus: o.cpus.clone(),
        queue: o.queue,
        lang: o.lang.clone(),
        datapath: None,
        image_budget: Duration::from_millis(o.image_timeout_ms),
        message_budget: Duration::from_millis(o.message_timeout_ms),
        max_images: o.max_images,
        cache_entries: o.cache_entries,
        prepare: mxgate_ocr::Prepare {
            min_side: o.min_side,
            max_pixels: o.max_pixels,
            pixel_cap: o.pixel_cap,
            upscale_below: o.upscale_below,
            ..mxgate_ocr::Prepare::default()
        },
    }
}

/// The OCR stage: the pool and when to use it.
pub struct OcrStage {
    pool: mxgate_ocr::Pool,
    when: mxgate_ocr::When,
    /// Longest wait for the text of a message's images.
    pub timeout: Duration,
}

impl OcrStage {
    /// Starts the Tesseract workers (fails when the language data is missing).
    pub fn new(cfg: &Config) -> anyhow::Result<OcrStage> {
        let o = &cfg.ocr;
        let pc = ocr_config(o);
        let pool = mxgate_ocr::Pool::new(&pc)?;
        if std::env::var_os("OMP_THREAD_LIMIT").is_none_or(|v| v != "1") {
            tracing::warn!(
                "ocr: OMP_THREAD_LIMIT=1 is not set; Tesseract will be several times slower"
            );
        }
        tracing::info!(workers = o.workers, lang = %o.lang, "ocr: ready");
        Ok(OcrStage {
            pool,
            when: mxgate_ocr::When {
                max_text_chars: o.max_text_chars,
            },
            // The workers stop reading at the message budget; a little slack for the last image.
            timeout: Duration::from_millis(o.message_timeout_ms + o.image_timeout_ms.min(2_000)),
        })
    }
}

type OcrTicket = Ticket<Result<mxgate_ocr::OcrResult, mxgate_ocr::TessError>>;

/// Why an offloaded stage has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The pool's queue was full.
    Saturated,
    /// No result within the stage's time.
    TimedOut,
    /// The worker failed on this message.
    Failed,
}

impl From<Abandoned> for Unavailable {
    fn from(a: Abandoned) -> Unavailable {
        match a {
            Abandoned::Failed => Unavailable::Failed,
            Abandoned::TimedOut => Unavailable::TimedOut,
        }
    }
}

/// What the offloaded stages found, once waited for.
#[derive(Debug, Default)]
pub struct Offloaded {
    /// The AV scan, when the stage is on.
    pub av: Option<Result<AvDone, Unavailable>>,
    /// The OCR text, when the stage is on and the message had images worth reading.
    pub ocr: Option<Result<mxgate_ocr::OcrResult, Unavailable>>,
    /// The message as parsed on the shard to find its images, for the content stages to use
    /// rather than parse it again.
    pub message: Option<Message>,
}

/// Tickets for a message's offloaded work.
pub struct Pending {
    av: Option<(Result<Ticket<AvDone>, Saturated>, Duration)>,
    ocr: Option<(Result<OcrTicket, Saturated>, Duration)>,
    message: Option<Message>,
}

impl Pending {
    /// Nothing offloaded.
    pub fn none() -> Pending {
        Pending {
            av: None,
            ocr: None,
            message: None,
        }
    }

    /// Whether anything was handed to a pool.
    pub fn is_some(&self) -> bool {
        self.av.is_some() || self.ocr.is_some()
    }

    /// Hands the message to the stages that are on; `parsed` is the message parsed by the
    /// caller, when it was (else it is parsed here, if OCR needs it, and kept).
    pub fn submit(
        av: Option<&AvStage>,
        ocr: Option<&OcrStage>,
        body: &Bytes,
        parsed: Option<&Message>,
    ) -> Pending {
        let av = av.map(|s| (s.submit(body), s.timeout));
        let mut message = None;
        let ocr = ocr.and_then(|s| {
            let msg = match parsed {
                Some(m) => m,
                None => message.insert(Message::parse(body.clone())),
            };
            let images = mxgate_ocr::images_to_read(msg, &s.when);
            (!images.is_empty()).then(|| (s.pool.submit(images), s.timeout))
        });
        Pending { av, ocr, message }
    }

    /// Waits on a glommio shard: both stages run at once, each bounded by its own deadline.
    pub async fn resolve(self) -> Offloaded {
        let av = async {
            match self.av {
                None => None,
                Some((t, limit)) => Some(wait_async(t, limit).await),
            }
        };
        let ocr = async {
            match self.ocr {
                None => None,
                Some((t, limit)) => Some(
                    wait_async(t, limit)
                        .await
                        .and_then(|r| r.map_err(|_| Unavailable::Failed)),
                ),
            }
        };
        let (av, ocr) = futures_lite::future::zip(av, ocr).await;
        Offloaded {
            av,
            ocr,
            message: self.message,
        }
    }

    /// Waits, blocking the calling thread (`mxgate scan`, plain threaded programs).
    pub fn wait(self) -> Offloaded {
        let av = self.av.map(|(t, limit)| wait_blocking(t, limit));
        let ocr = self.ocr.map(|(t, limit)| {
            wait_blocking(t, limit).and_then(|r| r.map_err(|_| Unavailable::Failed))
        });
        Offloaded {
            av,
            ocr,
            message: self.message,
        }
    }
}

async fn wait_async<R>(t: Result<Ticket<R>, Saturated>, limit: Duration) -> Result<R, Unavailable> {
    let t = t.map_err(|_| Unavailable::Saturated)?;
    crate::rt::timeout(limit, t)
        .await
        .unwrap_or(Err(Abandoned::TimedOut))
        .map_err(Unavailable::from)
}

fn wait_blocking<R>(t: Result<Ticket<R>, Saturated>, limit: Duration) -> Result<R, Unavailable> {
    Ok(t.map_err(|_| Unavailable::Saturated)?.wait_timeout(limit)?)
}
