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
    Ok(cfg)
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
        let limits = Limits {
            hostname: hostname.clone(),
            max_line_length: s.max_line_length,
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            max_transactions: s.max_transactions,
            max_errors: s.max_errors,
            bare_lf: s.bare_lf,
            starttls: tls.is_some(),
            command_timeout: Duration::from_secs(s.command_timeout_secs),
            data_timeout: Duration::from_secs(s.data_timeout_secs),
        };
        let next_hop = config.relay.next_hop.parse()?;
        let chain = Chain::new_after(&config, prev.map(|p| (&p.config, &p.chain)))?;
        Ok(Snapshot {
            hostname,
            limits,
            tls,
            next_hop,
            chain,
            path,
            config,
        })
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
