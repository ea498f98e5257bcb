//! Every hardware profile, on its topology fixture: the probe names it, and its plan holds
//! together (shards on distinct CPUs of the machine, per node as the node's cores allow,
//! workers apart from the shards, io_uring memory within the memlock limit).

use std::collections::BTreeSet;
use std::path::PathBuf;

use mxgate_tuning::profile::{Shards, WorkersOn, BUILTIN};
use mxgate_tuning::{probe, Plan, Profile, Topology};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/topology")
        .join(name)
}

/// (profile, sockets, cores per socket, threads per core, nodes, L3 groups)
const SHAPES: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("hp-proliant-dl360-g5", 2, 4, 1, 1, 2),
    ("hp-proliant-dl380-g5", 2, 4, 1, 1, 2),
    ("ibm-x3650", 2, 4, 1, 1, 2),
    ("fujitsu-primergy-rx300-s3", 2, 4, 1, 1, 2),
    ("intel-s5000", 2, 4, 1, 1, 2),
    ("lex-appliance", 1, 2, 1, 1, 1),
    ("xeon-scalable-2s", 2, 16, 2, 2, 2),
    ("amd-epyc-nps4", 1, 32, 2, 4, 8),
    ("cloud-4vcpu", 1, 2, 2, 1, 1),
    ("vm-2core", 1, 2, 1, 1, 1),
    ("generic", 1, 6, 2, 1, 1),
];

#[test]
fn every_builtin_profile_has_a_fixture_and_a_shape() {
    for (name, _) in BUILTIN {
        assert!(fixture(name).is_dir(), "no fixture for {name}");
        assert!(SHAPES.iter().any(|s| s.0 == *name), "no shape for {name}");
    }
}

#[test]
fn fixtures_read_as_the_servers_they_are() {
    for &(name, sockets, cores, threads, nodes, l3) in SHAPES {
        let t = Topology::detect(&fixture(name)).unwrap();
        assert_eq!(t.packages, sockets, "{name}");
        assert_eq!(t.cores_per_package(), cores, "{name}");
        assert_eq!(t.threads_per_core(), threads, "{name}");
        assert_eq!(t.nodes.len(), nodes, "{name}");
        assert_eq!(t.l3_groups.len(), l3, "{name}");
        assert_eq!(t.cpus.len(), sockets * cores * threads, "{name}");
        // Every CPU in exactly one core and one node.
        let all: BTreeSet<usize> = t.cores.iter().flatten().copied().collect();
        assert_eq!(all.len(), t.cpus.len(), "{name}");
        let in_nodes: usize = t.nodes.iter().map(|n| n.cpus.len()).sum();
        assert_eq!(in_nodes, t.cpus.len(), "{name}");
    }
}

#[test]
fn the_probe_names_each_profile_on_its_own_machine() {
    let profiles = Profile::all(None).unwrap();
    for &(name, ..) in SHAPES {
        let t = Topology::detect(&fixture(name)).unwrap();
        let (p, why) = probe(&profiles, &t).unwrap();
        assert_eq!(p.name, name, "{name}: {why:?}");
        assert!(!why.is_empty(), "{name}: no reason given");
    }
}

#[test]
fn an_unlisted_product_of_a_known_shape_gets_that_shape() {
    // A 2 x 4-core front-side-bus server of another make: one of the old profiles (they share
    // one layout), never a modern one.
    let profiles = Profile::all(None).unwrap();
    let mut t = Topology::detect(&fixture("intel-s5000")).unwrap();
    t.product = "Some Other Server".into();
    let (p, _) = probe(&profiles, &t).unwrap();
    assert_eq!(p.plan.shards, Shards::PerCore);
    assert_eq!(p.matches.cores_per_socket, Some(4));
}

#[test]
fn every_plan_holds_together() {
    let profiles = Profile::all(None).unwrap();
    for &(name, ..) in SHAPES {
        let t = Topology::detect(&fixture(name)).unwrap();
        let p = profiles.iter().find(|p| p.name == name).unwrap();
        for memlock in [Some(8u64 << 20), Some(64 << 10), None] {
            let plan = Plan::compute(p, &t, memlock);
            let cpus = plan.shard_cpus();
            let distinct: BTreeSet<usize> = cpus.iter().copied().collect();
            assert_eq!(distinct.len(), cpus.len(), "{name}: a CPU with two shards");
            assert!(!cpus.is_empty(), "{name}: no shard");
            for s in &plan.shards {
                assert!(
                    t.cpus.iter().any(|c| c.id == s.cpu),
                    "{name}: CPU {} not here",
                    s.cpu
                );
                assert_eq!(t.node_of(s.cpu), s.node, "{name}");
            }
            // Every node runs shards.
            for n in &t.nodes {
                assert!(
                    plan.shards.iter().any(|s| s.node == n.id),
                    "{name}: node {} idle",
                    n.id
                );
            }
            // Reserved and worker CPUs are not shard CPUs.
            for c in plan
                .reserved_cpus
                .iter()
                .chain(&plan.av.cpus)
                .chain(&plan.ocr.cpus)
            {
                assert!(
                    !distinct.contains(c),
                    "{name}: CPU {c} both shard and worker"
                );
            }
            let expected = match p.plan.shards {
                Shards::PerCore => t.cores.len() - plan.reserved_cpus.len() / t.threads_per_core(),
                Shards::PerCpu => t.cpus.len() - plan.reserved_cpus.len(),
            };
            assert_eq!(cpus.len(), expected, "{name}");
            if p.plan.workers_on == WorkersOn::Siblings && t.threads_per_core() > 1 {
                assert_eq!(
                    plan.av.cpus.len(),
                    t.cores.len() * (t.threads_per_core() - 1),
                    "{name}"
                );
            }
            assert!(plan.av.count >= 1 && plan.ocr.count >= 1, "{name}");
            // io_uring memory: within half the memlock limit, or glommio's floor.
            if let Some(limit) = memlock {
                let share = (limit / 2) as usize / cpus.len();
                assert!(plan.io_memory_bytes <= share.max(512 * 1024), "{name}");
            }
            assert!(plan.io_memory_bytes >= 512 * 1024, "{name}");
            assert_eq!(
                plan.per_node_copies,
                p.plan.per_node_copies && t.nodes.len() > 1,
                "{name}"
            );
            let text = plan.render();
            assert!(text.contains(&format!("profile   {name}")), "{text}");
            let json = serde_json::to_value(&plan).unwrap();
            assert_eq!(json["shards"].as_array().unwrap().len(), cpus.len());
        }
    }
}

#[test]
fn reservations_keep_a_core_per_node() {
    let t = Topology::detect(&fixture("lex-appliance")).unwrap();
    let mut p = Profile::all(None)
        .unwrap()
        .into_iter()
        .find(|p| p.name == "lex-appliance")
        .unwrap();
    p.plan.reserve_cores = 5;
    p.plan.workers_on = WorkersOn::Reserved;
    let plan = Plan::compute(&p, &t, None);
    assert_eq!(plan.shards.len(), 1);
    assert_eq!(plan.reserved_cpus.len(), 1);
    assert_eq!(plan.av.cpus, plan.reserved_cpus);
    assert!(
        plan.notes.iter().any(|n| n.contains("keeps one core")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn profile_errors_name_the_file() {
    let e = Profile::parse("name = \"x\"\n[plan]\nshards = \"sideways\"\n", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml"), "{e}");
}
