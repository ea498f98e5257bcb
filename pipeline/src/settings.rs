//! Configuration layering (embedded defaults < file < command-line flags) and the immutable
//! snapshot the shards run on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mxgate_core::config::{Config, ConfigError};
use mxgate_core::smtp::Limits;

use crate::stages::Chain;

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen ADDR` (replaces `server.listen`).
    pub listen: Option<String>,
    /// `--relay ADDR` (replaces `relay.next_hop`).
    pub relay: Option<String>,
    /// `--stages LIST`.
    pub stages: Option<String>,
    /// `--metrics ADDR` (replaces `metrics.listen`).
    pub metrics: Option<String>,
}

/// Reads the file (if any), applies the flags, validates.
pub fn load(path: Option<&Path>, ov: &Overrides) -> Result<Config, ConfigError> {
    let (mut cfg, origin) = match path {
        Some(p) => {
            let origin = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Parse {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
            (Config::from_toml(&text, &origin)?, origin)
        }
        None => (Config::default(), "<defaults>".to_owned()),
    };
    if let Some(l) = &ov.listen {
        cfg.server.listen = l.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if let Some(r) = &ov.relay {
        cfg.relay.next_hop = r.clone();
    }
    if let Some(s) = &ov.stages {
        cfg.stages.enabled = Config::parse_stages(s)?;
    }
    if let Some(m) = &ov.metrics {
        cfg.metrics.listen = m.clone();
    }
    cfg.validate(&format!("{origin} + flags"))?;
    apply_tuning(&mut cfg).map_err(|message| ConfigError::Invalid {
        origin: origin.clone(),
        field: "tuning.profile",
        message,
    })?;
    Ok(cfg)
}

/// The placement plan for a configuration's `[tuning]` section: `None` with `profile = "none"`.
pub fn tuning_plan(cfg: &Config) -> Result<Option<mxgate_tuning::Plan>, String> {
    use mxgate_tuning::{probe, Plan, Profile, Topology};
    let t = &cfg.tuning;
    if t.profile == "none" {
        return Ok(None);
    }
    let dir = (!t.profiles_dir.is_empty()).then(|| Path::new(&t.profiles_dir));
    let profiles = Profile::all(dir).map_err(|e| e.to_string())?;
    let topology = Topology::detect(Path::new(&t.topology)).map_err(|e| e.to_string())?;
    let profile = if t.profile == "auto" {
        probe(&profiles, &topology).map(|(p, _)| p)
    } else {
        profiles.iter().find(|p| p.name == t.profile)
    };
    let Some(profile) = profile else {
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        return Err(format!(
            "{:?}: no such profile (known: auto, none, {})",
            t.profile,
            names.join(", ")
        ));
    };
    Ok(Some(Plan::compute(
        profile,
        &topology,
        mxgate_tuning::memlock_limit(),
    )))
}

/// Fills the settings left to the plan (0 or empty): shards and their CPUs, connection limit,
/// io_uring memory, AV and OCR worker counts and CPUs; the fallbacks without a plan. CPUs this
/// process may not run on (a cpuset, `taskset`) are left out of the plan's pinning.
pub fn apply_tuning(cfg: &mut Config) -> Result<Option<mxgate_tuning::Plan>, String> {
    let plan = tuning_plan(cfg)?;
    if let Some(plan) = &plan {
        let allowed = mxgate_core::pool::allowed_cpus();
        let ok = |cpus: &[usize]| -> Vec<usize> {
            cpus.iter()
                .copied()
                .filter(|c| allowed.is_empty() || allowed.contains(c))
                .collect()
        };
        let s = &mut cfg.server;
        if s.shards == 0 && s.cpus.is_empty() {
            let cpus = ok(&plan.shard_cpus());
            if !cpus.is_empty() {
                s.shards = cpus.len();
                s.cpus = cpus;
            }
        }
        if s.max_connections == 0 {
            s.max_connections = plan.max_connections_per_shard;
        }
        if s.io_memory_kib == 0 {
            s.io_memory_kib = plan.io_memory_bytes / 1024;
        }
        if cfg.av.workers == 0 {
            cfg.av.workers = plan.av.count;
            if cfg.av.cpus.is_empty() {
                cfg.av.cpus = ok(&plan.av.cpus);
            }
        }
        if cfg.ocr.workers == 0 {
            cfg.ocr.workers = plan.ocr.count;
            if cfg.ocr.cpus.is_empty() {
                cfg.ocr.cpus = ok(&plan.ocr.cpus);
            }
        }
    }
    let s = &mut cfg.server;
    if s.max_connections == 0 {
        s.max_connections = 10_000;
    }
    if s.io_memory_kib == 0 {
        s.io_memory_kib = 1024;
    }
    if cfg.av.workers == 0 {
        cfg.av.workers = 2;
    }
    if cfg.ocr.workers == 0 {
        cfg.ocr.workers = 1;
    }
    Ok(plan)
}

/// Everything derived from one configuration: built once, shared read-only by all shards,
/// replaced as a whole on reload.
pub struct Snapshot {
    /// The configuration it was built from.
    pub config: Config,
    /// Our host name.
    pub hostname: String,
    /// Session limits.
    pub limits: Limits,
    /// STARTTLS server configuration, when a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// SMTP AUTH password checks, when a users file is configured.
    pub sasl: Option<Arc<crate::sasl::Verifier>>,
    /// The next hop.
    pub next_hop: SocketAddr,
    /// The stage chain.
    pub chain: Chain,
    /// Where the configuration came from (reload reads it again).
    pub path: Option<PathBuf>,
}

impl Snapshot {
    /// Builds the snapshot; fails on unreadable TLS files.
    pub fn build(config: Config, path: Option<PathBuf>) -> anyhow::Result<Snapshot> {
        Snapshot::rebuild(config, path, None)
    }

    /// Builds the snapshot for a reload: stages whose configuration did not change are taken
    /// over from `prev` as they are (the AV engine and its watcher, the OCR workers) rather than
    /// built a second time beside the running ones.
    pub fn rebuild(
        config: Config,
        path: Option<PathBuf>,
        prev: Option<&Snapshot>,
    ) -> anyhow::Result<Snapshot> {
        let hostname = if config.server.hostname.is_empty() {
            system_hostname()
        } else {
            config.server.hostname.clone()
        };
        let tls = if config.tls.cert_file.is_empty() {
            None
        } else {
            Some(crate::tls::server_config(
                &config.tls.cert_file,
                &config.tls.key_file,
            )?)
        };
        let s = &config.smtp;
        let sasl = if s.auth_users_file.is_empty() {
            None
        } else {
            let v = crate::sasl::Verifier::new(std::path::Path::new(&s.auth_users_file))?;
            tracing::info!(users = v.users(), file = %s.auth_users_file, "smtp auth users loaded");
            if s.auth_needs_tls && tls.is_none() {
                tracing::warn!(
                    "smtp.auth_users_file is set but AUTH needs TLS and [tls] has no certificate: AUTH is not offered"
                );
            }
            Some(Arc::new(v))
        };
        let limits = Limits {
            hostname: hostname.clone(),
            max_line_length: s.max_line_length,
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            max_transactions: s.max_transactions,
            max_errors: s.max_errors,
            bare_lf: s.bare_lf,
            starttls: tls.is_some(),
            auth: sasl.is_some() && (tls.is_some() || !s.auth_needs_tls),
            auth_needs_tls: s.auth_needs_tls,
            command_timeout: Duration::from_secs(s.command_timeout_secs),
            data_timeout: Duration::from_secs(s.data_timeout_secs),
        };
        let next_hop = config.relay.next_hop.parse()?;
        let chain = Chain::new_after(&config, prev.map(|p| (&p.config, &p.chain)))?;
        Ok(Snapshot {
            hostname,
            limits,
            tls,
            sasl,
            next_hop,
            chain,
            path,
            config,
        })
    }
}

impl Snapshot {
    /// This snapshot with another stage chain (the final rule databases after a first start's).
    pub fn with_chain(&self, chain: Chain) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            hostname: self.hostname.clone(),
            limits: self.limits.clone(),
            tls: self.tls.clone(),
            sasl: self.sasl.clone(),
            next_hop: self.next_hop,
            chain,
            path: self.path.clone(),
        }
    }
}

/// The system host name.
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
