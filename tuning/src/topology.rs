//! The machine as Linux describes it under `/sys` and `/proc`: logical CPUs with their
//! package, core and SMT siblings, NUMA nodes with their CPUs and memory, L3 cache groups,
//! memory size, and the DMI product name.
//!
//! Everything is read relative to a root folder, so a saved tree (a test fixture, or a copy
//! taken on another server) reads exactly as the live `/` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    /// Its number (`cpuN`).
    pub id: usize,
    /// Physical package (socket).
    pub package: usize,
    /// Physical core: index into [`Topology::cores`].
    pub core: usize,
    /// NUMA node.
    pub node: usize,
    /// L3 group: index into [`Topology::l3_groups`].
    pub l3: usize,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Its number (`nodeN`).
    pub id: usize,
    /// Its CPUs.
    pub cpus: Vec<usize>,
    /// Its memory in KiB (0 when not reported).
    pub memory_kib: u64,
}

/// The machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Online logical CPUs, by number.
    pub cpus: Vec<Cpu>,
    /// Physical cores: the logical CPUs of each (SMT siblings), first CPU first.
    pub cores: Vec<Vec<usize>>,
    /// NUMA nodes (one holding everything when the kernel reports none).
    pub nodes: Vec<Node>,
    /// L3 cache groups: the CPUs sharing each.
    pub l3_groups: Vec<Vec<usize>>,
    /// Packages (sockets).
    pub packages: usize,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// DMI product name (empty when not available, as in most containers).
    pub product: String,
}

/// A topology that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TopologyError {
    path: PathBuf,
    message: String,
}

/// Parses a kernel CPU list (`0-3,8,10-11`).
pub fn parse_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

/// Writes a CPU list in the kernel's form.
pub fn format_list(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl Topology {
    /// Reads the topology under `root` (`/` for this machine).
    pub fn detect(root: &Path) -> Result<Topology, TopologyError> {
        let sys = root.join("sys/devices/system");
        let read = |p: &Path| -> Result<String, TopologyError> {
            std::fs::read_to_string(p).map_err(|e| TopologyError {
                path: p.to_path_buf(),
                message: e.to_string(),
            })
        };
        let bad = |p: &Path, what: &str| TopologyError {
            path: p.to_path_buf(),
            message: what.to_string(),
        };
        let online_path = sys.join("cpu/online");
        let online =
            parse_list(&read(&online_path)?).ok_or_else(|| bad(&online_path, "not a CPU list"))?;
        if online.is_empty() {
            return Err(bad(&online_path, "no CPU online"));
        }
        // Nodes: nodeN/cpulist; none reported means one node.
        let mut nodes: Vec<Node> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(sys.join("node")) {
            let mut ids: Vec<usize> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
                .collect();
            ids.sort_unstable();
            for id in ids {
                let dir = sys.join(format!("node/node{id}"));
                let p = dir.join("cpulist");
                let cpus = parse_list(&read(&p)?).ok_or_else(|| bad(&p, "not a CPU list"))?;
                let memory_kib = std::fs::read_to_string(dir.join("meminfo"))
                    .ok()
                    .and_then(|m| meminfo_total(&m))
                    .unwrap_or(0);
                nodes.push(Node {
                    id,
                    cpus: cpus.into_iter().filter(|c| online.contains(c)).collect(),
                    memory_kib,
                });
            }
            nodes.retain(|n| !n.cpus.is_empty());
        }
        let memory_kib = std::fs::read_to_string(root.join("proc/meminfo"))
            .ok()
            .and_then(|m| meminfo_total(&m))
            .unwrap_or_else(|| nodes.iter().map(|n| n.memory_kib).sum());
        if nodes.is_empty() {
            nodes.push(Node {
                id: 0,
                cpus: online.clone(),
                memory_kib,
            });
        }
        let mut cpus = Vec::new();
        // (package, core_id) → core index; siblings grouped by that key.
        let mut core_index: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        let mut cores: Vec<Vec<usize>> = Vec::new();
        let mut l3_index: BTreeMap<L3Key, usize> = BTreeMap::new();
        let mut l3_groups: Vec<Vec<usize>> = Vec::new();
        let mut packages = std::collections::BTreeSet::new();
        for &id in &online {
            let dir = sys.join(format!("cpu/cpu{id}"));
            let num = |name: &str| -> Result<usize, TopologyError> {
                let p = dir.join("topology").join(name);
                read(&p)?
                    .trim()
                    .parse()
                    .map_err(|_| bad(&p, "not a number"))
            };
            let package = num("physical_package_id")?;
            let core_id = num("core_id")?;
            packages.insert(package);
            let core = *core_index.entry((package, core_id)).or_insert_with(|| {
                cores.push(Vec::new());
                cores.len() - 1
            });
            cores[core].push(id);
            let node = nodes
                .iter()
                .find(|n| n.cpus.contains(&id))
                .map_or(0, |n| n.id);
            // The L3 group: the cache index of level 3, else the package.
            let mut group = None;
            if let Ok(rd) = std::fs::read_dir(dir.join("cache")) {
                for e in rd.filter_map(|e| e.ok()) {
                    let level = std::fs::read_to_string(e.path().join("level")).unwrap_or_default();
                    if level.trim() == "3" {
                        group = std::fs::read_to_string(e.path().join("shared_cpu_list"))
                            .ok()
                            .and_then(|s| parse_list(&s));
                    }
                }
            }
            // Without a level-3 cache reported, the package is the group.
            let key = match group {
                Some(mut g) => {
                    g.retain(|c| online.contains(c));
                    L3Key::Shared(g)
                }
                None => L3Key::Package(package),
            };
            let l3 = *l3_index.entry(key).or_insert_with(|| {
                l3_groups.push(Vec::new());
                l3_groups.len() - 1
            });
            l3_groups[l3].push(id);
            cpus.push(Cpu {
                id,
                package,
                core,
                node,
                l3,
            });
        }
        for c in &mut cores {
            c.sort_unstable();
        }
        let product = std::fs::read_to_string(root.join("sys/class/dmi/id/product_name"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(Topology {
            cpus,
            cores,
            nodes,
            l3_groups,
            packages: packages.len(),
            memory_kib,
            product,
        })
    }

    /// Logical CPUs per physical core (1 without SMT).
    pub fn threads_per_core(&self) -> usize {
        self.cores.iter().map(Vec::len).max().unwrap_or(1)
    }

    /// Physical cores per package.
    pub fn cores_per_package(&self) -> usize {
        self.cores.len() / self.packages.max(1)
    }

    /// The node of a CPU.
    pub fn node_of(&self, cpu: usize) -> usize {
        self.cpus.iter().find(|c| c.id == cpu).map_or(0, |c| c.node)
    }

    /// One line: `2 sockets x 4 cores, no SMT, 1 NUMA node, 2 L3 groups, 16 GiB (ProLiant ...)`.
    pub fn summary(&self) -> String {
        format!(
            "{} socket{} x {} cores, {}, {} NUMA node{}, {} L3 group{}, {} GiB{}",
            self.packages,
            if self.packages == 1 { "" } else { "s" },
            self.cores_per_package(),
            if self.threads_per_core() > 1 {
                format!("SMT x{}", self.threads_per_core())
            } else {
                "no SMT".into()
            },
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            self.l3_groups.len(),
            if self.l3_groups.len() == 1 { "" } else { "s" },
            self.memory_kib / (1024 * 1024),
            if self.product.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.product)
            }
        )
    }
}

/// What identifies an L3 group: the CPUs the cache reports sharing it, or the package.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum L3Key {
    Shared(Vec<usize>),
    Package(usize),
}

/// `MemTotal:` of a meminfo file (the system's or a node's), in KiB.
fn meminfo_total(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains("MemTotal:"))
        .and_then(|l| l.split_whitespace().rev().nth(1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_list(""), Some(vec![]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(format_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
    }

    #[test]
    fn this_machine_reads() {
        let t = Topology::detect(Path::new("/")).expect("this machine's /sys");
        assert!(!t.cpus.is_empty());
        assert_eq!(
            t.cores.iter().map(Vec::len).sum::<usize>(),
            t.cpus.len(),
            "every CPU in one core"
        );
        assert!(t.memory_kib > 0);
    }

    #[test]
    fn meminfo() {
        assert_eq!(
            meminfo_total("MemTotal:       24683652 kB\n"),
            Some(24_683_652)
        );
        assert_eq!(
            meminfo_total("Node 0 MemTotal:        9791260 kB\nNode 0 MemFree: 1 kB"),
            Some(9_791_260)
        );
    }
}
