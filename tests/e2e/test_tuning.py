"""End-to-end tests of the hardware profiles and the placement plan: `mxgate tune probe|show`
on this machine and on the topology fixtures, and `mxgate serve` running on the probed plan."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Mxgate, Sink  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tuning", "testdata", "topology")
WORK = tempfile.mkdtemp(prefix="mxgate-e2e-tune-")


def mxgate(*args):
    r = subprocess.run([harness.MXGATE, *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


class Commands(unittest.TestCase):
    def test_probe_names_a_profile_for_this_machine(self):
        rc, out, err = mxgate("tune", "probe", "--json")
        self.assertEqual(rc, 0, err)
        v = json.loads(out)
        self.assertEqual(len(v["topology"]["cpus"]), os.cpu_count())
        self.assertTrue(v["why"], v)

    def test_every_fixture_probes_as_its_profile_and_shows_a_plan(self):
        names = sorted(os.listdir(FIXTURES))
        self.assertGreaterEqual(len(names), 11)
        for name in names:
            d = os.path.join(FIXTURES, name)
            rc, out, err = mxgate("tune", "probe", "--topology", d, "--json")
            self.assertEqual(rc, 0, err)
            self.assertEqual(json.loads(out)["profile"], name)
            rc, out, err = mxgate("tune", "show", "--topology", d, "--json")
            self.assertEqual(rc, 0, err)
            plan = json.loads(out)
            cpus = [s["cpu"] for s in plan["shards"]]
            self.assertEqual(len(cpus), len(set(cpus)), name)
            self.assertFalse(set(cpus) & set(plan["av"]["cpus"]), name)
            rc, text, err = mxgate("tune", "show", "--topology", d)
            self.assertIn(f"profile   {name}", text)

    def test_epyc_plan_spreads_shards_over_its_four_nodes(self):
        d = os.path.join(FIXTURES, "amd-epyc-nps4")
        rc, out, err = mxgate("tune", "show", "--topology", d, "--json")
        plan = json.loads(out)
        per_node = {}
        for s in plan["shards"]:
            per_node.setdefault(s["node"], []).append(s["cpu"])
        self.assertEqual({k: len(v) for k, v in per_node.items()}, {0: 8, 1: 8, 2: 8, 3: 8})
        self.assertEqual(plan["av"]["cpus"], list(range(32, 64)))
        self.assertTrue(plan["per_node_copies"])

    def test_a_named_profile_and_an_unknown_one(self):
        rc, out, err = mxgate("tune", "show", "--profile", "hp-proliant-dl360-g5", "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["profile"], "hp-proliant-dl360-g5")
        rc, out, err = mxgate("tune", "show", "--profile", "no-such-box")
        self.assertNotEqual(rc, 0)
        self.assertIn("no-such-box", err)
        self.assertIn("generic", err)
        cfg = os.path.join(WORK, "bad-profile.toml")
        with open(cfg, "w") as f:
            f.write('[tuning]\nprofile = "no-such-box"\n')
        rc, out, err = mxgate("config", "check", cfg)
        self.assertNotEqual(rc, 0)
        self.assertIn("tuning.profile", err + out)


class Serve(unittest.TestCase):
    def serve_log(self, toml):
        sink = Sink(WORK)
        mx = Mxgate(WORK, sink.port, stages="hops", toml=toml)
        try:
            r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(mx.port),
                                "--from", "a@e2e.test", "--to", "b@e2e.test", "--timeout", "30"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            return re.sub(r"\x1b\[[0-9;]*m", "", mx.log())  # no colours
        finally:
            mx.stop()
            sink.stop()

    def test_serve_runs_on_the_probed_plan(self):
        log = self.serve_log("")
        rc, out, _ = mxgate("tune", "probe", "--json")
        profile = json.loads(out)["profile"]
        self.assertIn("tuning plan", log)
        self.assertIn(f"profile={profile}", log)
        # One shard per core here, each pinned.
        rc, out, _ = mxgate("tune", "show", "--json")
        cpus = [s["cpu"] for s in json.loads(out)["shards"]]
        self.assertIn(f"shards={len(cpus)}", log)
        m = re.search(r"cpus=\[([\d, ]*)\]", log)
        self.assertIsNotNone(m, log)
        self.assertEqual([int(c) for c in m.group(1).split(",") if c.strip()], cpus)

    def test_a_larger_machines_plan_keeps_to_the_cpus_this_process_has(self):
        d = os.path.join(FIXTURES, "xeon-scalable-2s")
        log = self.serve_log(f'[tuning]\ntopology = "{d}"\n')
        self.assertIn("profile=xeon-scalable-2s", log)
        m = re.search(r"cpus=\[([\d, ]*)\]", log)
        got = [int(c) for c in m.group(1).split(",") if c.strip()]
        self.assertEqual(set(got), set(range(32)) & os.sched_getaffinity(0))

    def test_the_plans_allocator_settings_reach_the_environment(self):
        sink = Sink(WORK)
        mx = Mxgate(WORK, sink.port, stages="hops", toml='[tuning]\nprofile = "xeon-scalable-2s"\n')
        try:
            with open(f"/proc/{mx.p.pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            self.assertIn(b"MIMALLOC_USE_NUMA_NODES=2", env)
            self.assertIn(b"OMP_THREAD_LIMIT=1", env)
        finally:
            mx.stop()
            sink.stop()

    def test_two_node_machine_gets_rules_and_bayes_copies_per_node(self):
        # A 2-socket, 1-core-per-socket machine whose sockets are NUMA nodes: CPUs 0 and 1 of
        # this machine then sit on different nodes, and the plan (generic) asks for a copy of
        # the compiled rules and of the Bayes model on each.
        sys.path.insert(0, os.path.join(REPO, "scripts"))
        import make_topology
        root = os.path.join(WORK, "two-nodes")
        make_topology.make(root, "", 2, 1, 1, 1, 1, 8)
        rc, out, err = mxgate("tune", "show", "--topology", root, "--json")
        plan = json.loads(out)
        self.assertEqual([s["node"] for s in plan["shards"]], [0, 1])
        self.assertTrue(plan["per_node_copies"])
        cache = os.environ.get("MXGATE_RULES_CACHE", "/var/tmp/mxgate-rules-cache")
        sink = Sink(WORK)
        db = os.path.join(WORK, "two-nodes-bayes")
        mx = Mxgate(WORK, sink.port, stages="hops,rules,bayes",
                    toml=f'[tuning]\ntopology = "{root}"\n[rules]\ncache_dir = "{cache}"\n'
                         f'[bayes]\ndb = "{db}"\n')
        try:
            for i in range(6):
                r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(mx.port),
                                    "--from", "a@e2e.test", "--to", "b@e2e.test",
                                    "--header", f"Subject: copy test {i}", "--timeout", "30"],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            sink.wait_messages(6)
            for _, body in sink.messages()[-6:]:
                self.assertIn(b"X-Spam-Status:", body)
            log = re.sub(r"\x1b\[[0-9;]*m", "", mx.log())
            self.assertIn("a copy of the compiled rules per NUMA node copies=2", log)
            self.assertIn("bayes: a copy of the model per NUMA node copies=2", log)
        finally:
            mx.stop()
            sink.stop()

    def test_profile_none_leaves_the_configuration_alone(self):
        log = self.serve_log('[tuning]\nprofile = "none"\n')
        self.assertNotIn("tuning plan", log)


class BenchHarness(unittest.TestCase):
    """`mxgate-bench run content --peers` says what the peers lack before any run starts."""

    def run_bench(self, env):
        t = time.monotonic()
        r = subprocess.run(
            [os.path.join(harness.BIN, "mxgate-bench"), "run", "content", "--peers",
             "--out", tempfile.mkdtemp(dir=WORK)],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env},
        )
        return r, time.monotonic() - t

    def test_missing_peer_scripts_are_named_at_once(self):
        empty = tempfile.mkdtemp(dir=WORK)
        r, took = self.run_bench({"MXGATE_PEERS": empty})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(os.path.join(empty, "bench_rspamd.sh"), r.stderr)
        self.assertNotIn("sessions", r.stderr)  # no gateway run started
        self.assertLess(took, 10)

    def test_missing_peer_programs_are_named_with_their_packages(self):
        peers = tempfile.mkdtemp(dir=WORK)
        for script in ("bench_rspamd.sh", "bench_spamd.sh"):
            with open(os.path.join(peers, script), "w") as f:
                f.write("exit 1\n")
        r, took = self.run_bench({"MXGATE_PEERS": peers, "PATH": tempfile.mkdtemp(dir=WORK)})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("rspamd, rspamc, spamd, spamc not installed", r.stderr)
        self.assertIn("apt-get install", r.stderr)
        self.assertNotIn("sessions", r.stderr)
        self.assertLess(took, 10)


if __name__ == "__main__":
    unittest.main()
