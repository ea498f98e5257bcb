//! Hardware profiles: what a server looks like (for matching) and how to lay the gateway out on
//! it. The profiles of `hw-profiles/` are built into the binary; a folder of more can be added.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::topology::Topology;

/// One profile, as a `hw-profiles/*.toml` file writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Its name (the file's stem by convention).
    pub name: String,
    /// What hardware it is for.
    pub description: String,
    /// How to recognize that hardware.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// The layout.
    pub plan: Layout,
}

/// What a profile is for; every field optional (`generic` has none).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// DMI product names (case-insensitive substrings).
    #[serde(default)]
    pub products: Vec<String>,
    /// Sockets.
    pub sockets: Option<usize>,
    /// Physical cores per socket.
    pub cores_per_socket: Option<usize>,
    /// Logical CPUs per core (2 with SMT).
    pub threads_per_core: Option<usize>,
    /// NUMA nodes.
    pub numa_nodes: Option<usize>,
}

/// How many shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shards {
    /// One per physical core left after the reservation (SMT siblings stay free).
    PerCore,
    /// One per logical CPU left after the reservation.
    PerCpu,
}

/// Where the AV and OCR worker threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkersOn {
    /// On the reserved cores.
    Reserved,
    /// On the SMT siblings of the shards' cores.
    Siblings,
    /// Anywhere (not pinned).
    Shared,
}

/// The layout a profile asks for.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Shards per core or per CPU.
    pub shards: Shards,
    /// Physical cores kept off the shards (spread over the nodes, at least one core per node
    /// stays a shard).
    #[serde(default)]
    pub reserve_cores: usize,
    /// Where the AV and OCR workers run.
    pub workers_on: WorkersOn,
    /// AV worker threads (0: one per CPU the workers may use).
    #[serde(default)]
    pub av_workers: usize,
    /// OCR worker threads (0: one per CPU the workers may use).
    #[serde(default)]
    pub ocr_workers: usize,
    /// Keep a copy of read-mostly data (compiled rules, Bayes model) per NUMA node.
    #[serde(default)]
    pub per_node_copies: bool,
    /// Most connections per shard.
    pub max_connections_per_shard: usize,
    /// Read buffer per connection, KiB.
    pub read_buffer_kib: usize,
    /// io_uring registered memory per shard, KiB (capped by RLIMIT_MEMLOCK).
    pub io_memory_kib: usize,
    /// mimalloc settings for the service's environment.
    #[serde(default)]
    pub allocator: BTreeMap<String, String>,
}

/// A profile file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ProfileError {
    origin: String,
    message: String,
}

/// The profiles shipped in `hw-profiles/`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("generic", include_str!("../../hw-profiles/generic.toml")),
    ("vm-2core", include_str!("../../hw-profiles/vm-2core.toml")),
    (
        "cloud-4vcpu",
        include_str!("../../hw-profiles/cloud-4vcpu.toml"),
    ),
    (
        "hp-proliant-dl360-g5",
        include_str!("../../hw-profiles/hp-proliant-dl360-g5.toml"),
    ),
    (
        "hp-proliant-dl380-g5",
        include_str!("../../hw-profiles/hp-proliant-dl380-g5.toml"),
    ),
    (
        "ibm-x3650",
        include_str!("../../hw-profiles/ibm-x3650.toml"),
    ),
    (
        "fujitsu-primergy-rx300-s3",
        include_str!("../../hw-profiles/fujitsu-primergy-rx300-s3.toml"),
    ),
    (
        "intel-s5000",
        include_str!("../../hw-profiles/intel-s5000.toml"),
    ),
    (
        "lex-appliance",
        include_str!("../../hw-profiles/lex-appliance.toml"),
    ),
    (
        "xeon-scalable-2s",
        include_str!("../../hw-profiles/xeon-scalable-2s.toml"),
    ),
    (
        "amd-epyc-nps4",
        include_str!("../../hw-profiles/amd-epyc-nps4.toml"),
    ),
];

impl Profile {
    /// Parses one profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if p.plan.max_connections_per_shard == 0 || p.plan.read_buffer_kib == 0 {
            return Err(ProfileError {
                origin: origin.to_string(),
                message: "max_connections_per_shard and read_buffer_kib must be at least 1".into(),
            });
        }
        Ok(p)
    }

    /// The built-in profiles, then those of `dir` (a later profile of the same name wins).
    pub fn all(dir: Option<&Path>) -> Result<Vec<Profile>, ProfileError> {
        let mut out: Vec<Profile> = BUILTIN
            .iter()
            .map(|(name, text)| Profile::parse(text, &format!("hw-profiles/{name}.toml")))
            .collect::<Result<_, _>>()?;
        if let Some(dir) = dir {
            let rd = std::fs::read_dir(dir).map_err(|e| ProfileError {
                origin: dir.display().to_string(),
                message: e.to_string(),
            })?;
            let mut paths: Vec<_> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            for p in paths {
                let text = std::fs::read_to_string(&p).map_err(|e| ProfileError {
                    origin: p.display().to_string(),
                    message: e.to_string(),
                })?;
                let prof = Profile::parse(&text, &p.display().to_string())?;
                out.retain(|o| o.name != prof.name);
                out.push(prof);
            }
        }
        Ok(out)
    }

    /// How well the profile fits a topology, with the reasons. `None` when a stated criterion
    /// contradicts it (the profile is for other hardware).
    pub fn fit(&self, t: &Topology) -> Option<(u32, Vec<String>)> {
        let m = &self.matches;
        let mut score = 0;
        let mut why = Vec::new();
        let mut check = |want: Option<usize>, have: usize, what: &str, weight: u32| -> bool {
            match want {
                None => true,
                Some(w) if w == have => {
                    score += weight;
                    why.push(format!("{what} {have}"));
                    true
                }
                Some(_) => false,
            }
        };
        if !(check(m.sockets, t.packages, "sockets", 10)
            && check(
                m.cores_per_socket,
                t.cores_per_package(),
                "cores per socket",
                10,
            )
            && check(
                m.threads_per_core,
                t.threads_per_core(),
                "threads per core",
                5,
            )
            && check(m.numa_nodes, t.nodes.len(), "NUMA nodes", 5))
        {
            return None;
        }
        let product = t.product.to_lowercase();
        if let Some(p) = m
            .products
            .iter()
            .find(|p| !product.is_empty() && product.contains(&p.to_lowercase()))
        {
            score += 100;
            why.insert(0, format!("product name contains {p:?}"));
        }
        Some((score, why))
    }
}

/// The best profile for a topology, with the reasons; `generic` (or the first that fits) when
/// nothing more specific does.
pub fn probe<'a>(profiles: &'a [Profile], t: &Topology) -> Option<(&'a Profile, Vec<String>)> {
    let mut best: Option<(&Profile, u32, Vec<String>)> = None;
    for p in profiles {
        if let Some((score, why)) = p.fit(t) {
            if best.as_ref().is_none_or(|(_, s, _)| score > *s) {
                best = Some((p, score, why));
            }
        }
    }
    best.map(|(p, score, mut why)| {
        if score == 0 {
            why.push("no more specific profile fits".into());
        }
        (p, why)
    })
}
