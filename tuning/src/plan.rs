//! A profile applied to a topology: which CPUs run shards, where the AV and OCR workers go,
//! and the per-shard limits, each choice with its reason.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::profile::{Profile, Shards, WorkersOn};
use crate::topology::{format_list, Topology};

/// Where one shard runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardPlace {
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// Its NUMA node.
    pub node: usize,
}

/// A pool of worker threads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workers {
    /// Threads.
    pub count: usize,
    /// CPUs they are pinned to (all of them, together); empty: not pinned.
    pub cpus: Vec<usize>,
}

/// The plan `mxgate serve` follows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The profile it comes from.
    pub profile: String,
    /// The machine, in one line.
    pub topology: String,
    /// Shards, in order.
    pub shards: Vec<ShardPlace>,
    /// Physical cores kept off the shards (their CPUs).
    pub reserved_cpus: Vec<usize>,
    /// AV workers.
    pub av: Workers,
    /// OCR workers.
    pub ocr: Workers,
    /// A copy of read-mostly data per NUMA node.
    pub per_node_copies: bool,
    /// Most connections per shard.
    pub max_connections_per_shard: usize,
    /// Read buffer per connection, bytes.
    pub read_buffer_bytes: usize,
    /// io_uring registered memory per shard, bytes.
    pub io_memory_bytes: usize,
    /// mimalloc settings for the service's environment.
    pub allocator: BTreeMap<String, String>,
    /// Why, choice by choice.
    pub notes: Vec<String>,
}

/// glommio refuses less registered memory than this.
const IO_MEMORY_MIN: usize = 512 * 1024;

impl Plan {
    /// Applies `profile` to `t`; `memlock` is RLIMIT_MEMLOCK in bytes (`None`: unlimited).
    pub fn compute(profile: &Profile, t: &Topology, memlock: Option<u64>) -> Plan {
        let l = &profile.plan;
        let mut notes = Vec::new();
        // Physical cores per node, in order.
        let mut node_cores: Vec<(usize, Vec<usize>)> = t
            .nodes
            .iter()
            .map(|n| {
                let cores = (0..t.cores.len())
                    .filter(|&c| t.node_of(t.cores[c][0]) == n.id)
                    .collect();
                (n.id, cores)
            })
            .collect();
        // Reserve from the last cores of each node in turn, keeping one core per node.
        let mut reserved_cores: Vec<usize> = Vec::new();
        let mut left = l.reserve_cores;
        'outer: while left > 0 {
            let mut took = false;
            for (_, cores) in node_cores.iter_mut() {
                if left == 0 {
                    break 'outer;
                }
                if cores.len() > 1 {
                    if let Some(c) = cores.pop() {
                        reserved_cores.push(c);
                        left -= 1;
                        took = true;
                    }
                }
            }
            if !took {
                notes.push(format!(
                    "{} of {} cores reserved: every node keeps one core for a shard",
                    reserved_cores.len(),
                    l.reserve_cores
                ));
                break;
            }
        }
        if !reserved_cores.is_empty() {
            notes.push(format!(
                "{} core(s) reserved for the AV and OCR workers, from the end of each node",
                reserved_cores.len()
            ));
        }
        let mut shards = Vec::new();
        let mut shard_cores = Vec::new();
        for (node, cores) in &node_cores {
            for &c in cores {
                shard_cores.push(c);
                let cpus: &[usize] = match l.shards {
                    Shards::PerCore => &t.cores[c][..1],
                    Shards::PerCpu => &t.cores[c],
                };
                for &cpu in cpus {
                    shards.push(ShardPlace { cpu, node: *node });
                }
            }
        }
        notes.push(match l.shards {
            Shards::PerCore => format!(
                "one shard per physical core ({}), pinned to its first CPU",
                shards.len()
            ),
            Shards::PerCpu => format!("one shard per logical CPU ({})", shards.len()),
        });
        let reserved_cpus: Vec<usize> = reserved_cores
            .iter()
            .flat_map(|&c| t.cores[c].iter().copied())
            .collect();
        let mut on = l.workers_on;
        let siblings: Vec<usize> = shard_cores
            .iter()
            .flat_map(|&c| t.cores[c].iter().skip(1).copied())
            .filter(|cpu| !shards.iter().any(|s| s.cpu == *cpu))
            .collect();
        if on == WorkersOn::Siblings && siblings.is_empty() {
            notes.push("no free SMT siblings here: the workers are not pinned".into());
            on = WorkersOn::Shared;
        }
        if on == WorkersOn::Reserved && reserved_cpus.is_empty() {
            notes.push("no core reserved here: the workers are not pinned".into());
            on = WorkersOn::Shared;
        }
        let worker_cpus = match on {
            WorkersOn::Reserved => reserved_cpus.clone(),
            WorkersOn::Siblings => siblings,
            WorkersOn::Shared => Vec::new(),
        };
        match on {
            WorkersOn::Reserved => notes.push(format!(
                "AV and OCR workers pinned to the reserved CPUs {}",
                format_list(&worker_cpus)
            )),
            WorkersOn::Siblings => notes.push(format!(
                "AV and OCR workers pinned to the shards' SMT siblings {}: a worker's stalls \
                 (libclamav and Tesseract wait on memory) fill the core's idle issue slots",
                format_list(&worker_cpus)
            )),
            WorkersOn::Shared => {}
        }
        let per_pool = |n: usize| {
            if n > 0 {
                n
            } else {
                worker_cpus.len().max(1)
            }
        };
        let av = Workers {
            count: per_pool(l.av_workers),
            cpus: worker_cpus.clone(),
        };
        let ocr = Workers {
            count: per_pool(l.ocr_workers),
            cpus: worker_cpus,
        };
        let per_node_copies = l.per_node_copies && t.nodes.len() > 1;
        if l.per_node_copies && t.nodes.len() == 1 {
            notes.push("one NUMA node: one copy of the rules and the Bayes model".into());
        } else if per_node_copies {
            notes.push(format!(
                "a copy of the compiled rules and the Bayes model on each of {} nodes",
                t.nodes.len()
            ));
        }
        // Registered io_uring memory: the profile's wish, within half the memlock limit shared
        // by all shards (the rest is left to the process).
        let mut io = l.io_memory_kib * 1024;
        if let Some(limit) = memlock {
            let share = (limit / 2) as usize / shards.len().max(1);
            if share < io {
                notes.push(format!(
                    "io_uring memory {} KiB per shard: half of RLIMIT_MEMLOCK ({} KiB) shared by {} shards",
                    share / 1024,
                    limit / 1024,
                    shards.len()
                ));
                io = share;
            }
        }
        if io < IO_MEMORY_MIN {
            notes.push(format!(
                "{} KiB asked, glommio's minimum: shards past the memlock limit fall back to \
                 unregistered buffers (raise LimitMEMLOCK to avoid it)",
                IO_MEMORY_MIN / 1024
            ));
            io = IO_MEMORY_MIN;
        }
        Plan {
            profile: profile.name.clone(),
            topology: t.summary(),
            shards,
            reserved_cpus,
            av,
            ocr,
            per_node_copies,
            max_connections_per_shard: l.max_connections_per_shard,
            read_buffer_bytes: l.read_buffer_kib * 1024,
            io_memory_bytes: io,
            allocator: l.allocator.clone(),
            notes,
        }
    }

    /// The shards' CPUs, in order.
    pub fn shard_cpus(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.cpu).collect()
    }

    /// The plan for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "profile   {}\nmachine   {}\n",
            self.profile, self.topology
        ));
        let mut by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for s in &self.shards {
            by_node.entry(s.node).or_default().push(s.cpu);
        }
        out.push_str(&format!("shards    {}", self.shards.len()));
        for (node, cpus) in &by_node {
            out.push_str(&format!("  node {node}: CPUs {}", format_list(cpus)));
        }
        out.push('\n');
        let pin = |w: &Workers| {
            if w.cpus.is_empty() {
                "not pinned".to_string()
            } else {
                format!("on CPUs {}", format_list(&w.cpus))
            }
        };
        out.push_str(&format!(
            "av        {} worker(s) {}\n",
            self.av.count,
            pin(&self.av)
        ));
        out.push_str(&format!(
            "ocr       {} worker(s) {}\n",
            self.ocr.count,
            pin(&self.ocr)
        ));
        out.push_str(&format!(
            "limits    {} connections per shard, {} KiB read buffer, {} KiB io_uring memory per shard\n",
            self.max_connections_per_shard,
            self.read_buffer_bytes / 1024,
            self.io_memory_bytes / 1024
        ));
        out.push_str(&format!(
            "copies    {}\n",
            if self.per_node_copies {
                "one per NUMA node"
            } else {
                "one"
            }
        ));
        if !self.allocator.is_empty() {
            let env: Vec<String> = self
                .allocator
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("allocator Environment=\"{}\"\n", env.join(" ")));
        }
        for n in &self.notes {
            out.push_str(&format!("  - {n}\n"));
        }
        out
    }
}
