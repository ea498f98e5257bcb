//! `mxgate-bench`: end-to-end benchmark scenarios, with the peers measured in the same run.
//!
//! A scenario is a folder under `bench-harness/scenarios/` holding `scenario.toml` (what to run,
//! how often, what every run must get right) and the gateway configuration. `run SCENARIO` starts
//! the processes itself on loopback, measures, checks the expected outcome (a run that gets faster
//! by losing mail fails), and writes `results.json` and `report.md` into the output folder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
mod flame;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mxgate-bench: end-to-end scenarios against the peers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario (a folder name under bench-harness/scenarios, or a path).
    Run {
        /// Scenario name or folder.
        scenario: String,
        /// Output folder (default: bench-results/<scenario>-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the repetitions of the scenario.
        #[arg(long)]
        reps: Option<usize>,
        /// Override the messages per run.
        #[arg(long)]
        count: Option<u64>,
        /// Also run the peers (rspamd, SpamAssassin's spamd) on the same corpus in the same
        /// run, with the scripts of ../shared/peers (or $MXGATE_PEERS), and print the ratios
        /// (the `content` scenario).
        #[arg(long)]
        peers: bool,
        /// Sample the gateway with `perf record` during the measured runs and draw
        /// `flamegraph.svg` (content scenarios).
        #[arg(long)]
        profile: bool,
    },
    /// List the scenarios.
    List,
}

#[derive(Deserialize)]
struct Scenario {
    corpus: Vec<String>,
    sessions: Vec<usize>,
    count: u64,
    reps: usize,
    per_conn: u64,
    #[serde(default)]
    idle_connections: usize,
    gateway_config: String,
    /// The loadgen's seed: the corpus is sent in the order it draws (`--shuffle --seed`), so a
    /// run sends the same messages in the same order every time.
    #[serde(default = "default_seed")]
    seed: u64,
    expect: Expect,
    /// Folders (relative to MXGATE_CORPUS) to train Bayes on first, spam then ham: the model
    /// goes to the output folder and replaces `@BAYES_DB@` in the gateway configuration.
    #[serde(default)]
    bayes_spam: Vec<String>,
    /// See `bayes_spam`.
    #[serde(default)]
    bayes_ham: Vec<String>,
    /// Offered loads, as fractions of the measured maximum, for the latency/throughput curve
    /// (with SVG plots); empty: none.
    #[serde(default)]
    sweep: Vec<f64>,
    /// Sessions for the sweep (default: the largest of `sessions`).
    #[serde(default)]
    sweep_sessions: Option<usize>,
}

fn default_seed() -> u64 {
    1
}

#[derive(Deserialize)]
struct Expect {
    accepted_fraction: f64,
    /// Per verdict of the gateway's metrics (`clean`, `spam`, `rejected`, `deferred`,
    /// `discarded`): the least and most share of a run's messages it may have, so that a
    /// benchmark also checks that the filter still tells spam from ham.
    #[serde(default)]
    verdicts: std::collections::BTreeMap<String, [f64; 2]>,
}

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe has no folder")?.to_path_buf())
}

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    match Cli::parse().cmd {
        Cmd::List => {
            for e in std::fs::read_dir(scenarios_dir())? {
                println!("{}", e?.file_name().to_string_lossy());
            }
            Ok(())
        }
        Cmd::Run {
            scenario,
            out,
            reps,
            count,
            peers,
            profile,
        } => {
            let dir = if Path::new(&scenario).is_dir() {
                PathBuf::from(&scenario)
            } else {
                scenarios_dir().join(&scenario)
            };
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(dir.join("scenario.toml"))
                .with_context(|| format!("{}/scenario.toml", dir.display()))?;
            let mut sc: Scenario = toml::from_str(&text)
                .with_context(|| format!("{}/scenario.toml", dir.display()))?;
            if let Some(r) = reps {
                sc.reps = r;
            }
            if let Some(c) = count {
                sc.count = c;
            }
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let out = out
                .unwrap_or_else(|| PathBuf::from("bench-results").join(format!("{name}-{stamp}")));
            std::fs::create_dir_all(&out)?;
            match name.as_str() {
                "relay" => relay(&dir, &sc, &out),
                "content" | "rules-bayes" | "full" | "overload" => {
                    content(&name, &dir, &sc, &out, peers, profile)
                }
                other => bail!("scenario {other:?} has no runner yet"),
            }
        }
    }
}

fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

struct Daemon {
    child: Child,
    name: String,
}

impl Daemon {
    fn start(name: &str, cmd: &mut Command, port: u16, out: &Path) -> anyhow::Result<Daemon> {
        let log = std::fs::File::create(out.join(format!("{name}.log")))?;
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let d = Daemon {
            child,
            name: name.to_owned(),
        };
        wait_port(port).with_context(|| format!("{} did not start", d.name))?;
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of a process, all threads, from /proc.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / tck)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A KiB figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:` for the peak).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .context(field.to_string())?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// What a loadgen run sends: the corpus folders, in the order the seed draws.
struct Load<'a> {
    corpus: &'a [PathBuf],
    seed: u64,
}

fn loadgen(
    bin: &Path,
    port: u16,
    load: &Load<'_>,
    sessions: usize,
    count: u64,
    per_conn: u64,
) -> anyhow::Result<Value> {
    loadgen_at(bin, port, load, sessions, count, per_conn, None)
}

/// [`loadgen`] with an offered rate (messages per second), or as fast as it goes.
fn loadgen_at(
    bin: &Path,
    port: u16,
    load: &Load<'_>,
    sessions: usize,
    count: u64,
    per_conn: u64,
    rate: Option<f64>,
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(bin.join("mxgate-loadgen"));
    cmd.arg("send")
        .arg("--shuffle")
        .arg("--seed")
        .arg(load.seed.to_string())
        .arg("--to")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--sessions")
        .arg(sessions.to_string())
        .arg("--count")
        .arg(count.to_string())
        .arg("--per-conn")
        .arg(per_conn.to_string())
        .arg("--json");
    if let Some(r) = rate {
        cmd.arg("--rate").arg(format!("{r:.0}"));
    }
    for c in load.corpus {
        cmd.arg("--corpus").arg(c);
    }
    let o = cmd.stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(o.status.success(), "loadgen failed");
    Ok(serde_json::from_slice(&o.stdout)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The corpus (`MXGATE_CORPUS`, else `../shared/corpus`) and the scenario's folders in it.
fn corpus_dirs(sc: &Scenario) -> (PathBuf, Vec<PathBuf>) {
    let root =
        PathBuf::from(std::env::var("MXGATE_CORPUS").unwrap_or_else(|_| "../shared/corpus".into()));
    let dirs = sc.corpus.iter().map(|c| root.join(c)).collect();
    (root, dirs)
}

fn relay(dir: &Path, sc: &Scenario, out: &Path) -> anyhow::Result<()> {
    let bin = bin_dir()?;
    let (_, corpus) = corpus_dirs(sc);
    let load = Load {
        corpus: &corpus,
        seed: sc.seed,
    };
    // The mean corpus message size, for the smtp-source message file.
    let (mut n, mut bytes) = (0u64, 0u64);
    for c in &corpus {
        for e in std::fs::read_dir(c).with_context(|| c.display().to_string())? {
            let m = e?.metadata()?;
            if m.is_file() {
                n += 1;
                bytes += m.len();
            }
        }
    }
    let mean = (bytes / n.max(1)) as usize;
    let msgfile = out.join("smtp-source.eml");
    {
        let mut f = std::fs::File::create(&msgfile)?;
        let mut body = String::from(
            "From: bench@example.test\nTo: rcpt@example.test\nSubject: relay benchmark\n\n",
        );
        while body.len() < mean {
            body.push_str(
                "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n",
            );
        }
        f.write_all(body.as_bytes())?;
    }

    let (sink_port, mx_port, pf_port) = (free_port()?, free_port()?, free_port()?);
    let _sink = start_sink(&bin, sink_port, out)?;
    let mx = start_gateway(&bin, &dir.join(&sc.gateway_config), mx_port, sink_port, out)?;
    let pf = Daemon::start(
        "smtp-sink",
        Command::new("smtp-sink").args(["-u", "nobody", &format!("127.0.0.1:{pf_port}"), "1024"]),
        pf_port,
        out,
    )?;

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &s in &sc.sessions {
        let (mut direct, mut relay, mut relay_p99, mut direct_p99) =
            (vec![], vec![], vec![], vec![]);
        let (mut mx_cpu, mut pf_cpu, mut pf_rate, mut src_rate) = (vec![], vec![], vec![], vec![]);
        for rep in 0..sc.reps {
            eprintln!("relay: sessions {s}, rep {}/{}", rep + 1, sc.reps);
            let d = loadgen(&bin, sink_port, &load, s, sc.count, sc.per_conn)?;
            check(&d, sc, "direct", &mut failures);
            direct.push(d["msgs_per_s"].as_f64().unwrap_or(0.0));
            direct_p99.push(d["latency_ms"]["p99"].as_f64().unwrap_or(0.0));

            let m0 = mx.metrics()?;
            let c0 = cpu_secs(mx.pid())?;
            let r = loadgen(&bin, mx_port, &load, s, sc.count, sc.per_conn)?;
            let c1 = cpu_secs(mx.pid())?;
            check(&r, sc, "mxgate", &mut failures);
            check_verdicts(
                &run_metrics(&m0, &mx.metrics()?),
                sc,
                &format!("mxgate, sessions {s}, run {}", rep + 1),
                &mut failures,
            );
            relay.push(r["msgs_per_s"].as_f64().unwrap_or(0.0));
            relay_p99.push(r["latency_ms"]["p99"].as_f64().unwrap_or(0.0));
            mx_cpu.push(1000.0 * (c1 - c0) / r["accepted"].as_f64().unwrap_or(1.0).max(1.0));

            let p0 = cpu_secs(pf.pid())?;
            let p = loadgen(&bin, pf_port, &load, s, sc.count, sc.per_conn)?;
            let p1 = cpu_secs(pf.pid())?;
            check(&p, sc, "smtp-sink", &mut failures);
            pf_rate.push(p["msgs_per_s"].as_f64().unwrap_or(0.0));
            pf_cpu.push(1000.0 * (p1 - p0) / p["accepted"].as_f64().unwrap_or(1.0).max(1.0));

            let t0 = Instant::now();
            let o = Command::new("smtp-source")
                .args([
                    "-s",
                    &s.to_string(),
                    "-m",
                    &sc.count.to_string(),
                    "-d",
                    "-F",
                ])
                .arg(&msgfile)
                .args([
                    "-f",
                    "bench@example.test",
                    "-t",
                    "rcpt@example.test",
                    &format!("127.0.0.1:{pf_port}"),
                ])
                .output()?;
            anyhow::ensure!(
                o.status.success(),
                "smtp-source failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            src_rate.push(sc.count as f64 / t0.elapsed().as_secs_f64());
        }
        let row = json!({
            "sessions": s,
            "direct_msgs_per_s": median(direct.clone()),
            "direct_p99_ms": median(direct_p99),
            "mxgate_msgs_per_s": median(relay.clone()),
            "mxgate_p99_ms": median(relay_p99),
            "mxgate_cpu_ms_per_msg": median(mx_cpu.clone()),
            "smtp_sink_msgs_per_s": median(pf_rate),
            "smtp_sink_cpu_ms_per_msg": median(pf_cpu.clone()),
            "smtp_source_to_smtp_sink_msgs_per_s": median(src_rate),
            "relay_over_direct": median(relay) / median(direct),
            "mxgate_cpu_over_smtp_sink_cpu": median(mx_cpu) / median(pf_cpu),
            "mxgate_rss_kib": rss_kib(mx.pid())?,
            "runs": sc.reps,
        });
        rows.push(row);
    }

    // RSS per idle connection.
    let rss0 = rss_kib(mx.pid())?;
    let mut held = Vec::with_capacity(sc.idle_connections);
    for _ in 0..sc.idle_connections {
        let mut c = TcpStream::connect(("127.0.0.1", mx_port))?;
        let mut g = [0u8; 256];
        let _ = c.read(&mut g)?;
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_kib(mx.pid())?;
    drop(held);
    let per_idle = (rss1 as f64 - rss0 as f64) / sc.idle_connections as f64;

    let results = json!({
        "scenario": "relay",
        "corpus": sc.corpus,
        "mean_message_bytes": mean,
        "count_per_run": sc.count,
        "rows": rows,
        "idle": {"connections": sc.idle_connections, "rss_before_kib": rss0, "rss_after_kib": rss1, "kib_per_connection": per_idle},
        "failures": failures,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let report = report(&results);
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    println!("results in {}", out.display());
    if !failures.is_empty() {
        bail!("correctness check failed: {failures:?}");
    }
    Ok(())
}

/// The peers `--peers` runs, each with its script in the peers' folder.
const PEERS: [(&str, &str); 2] = [("rspamd", "bench_rspamd.sh"), ("spamd", "bench_spamd.sh")];

/// The folder of the peers' scripts (`$MXGATE_PEERS`, or `../shared/peers`), once it and the
/// programs they run are found: an error naming what is missing otherwise.
fn peer_scripts() -> anyhow::Result<PathBuf> {
    let scripts =
        PathBuf::from(std::env::var("MXGATE_PEERS").unwrap_or_else(|_| "../shared/peers".into()));
    for (_, script) in PEERS {
        let path = scripts.join(script);
        anyhow::ensure!(
            path.is_file(),
            "--peers: {} not found (MXGATE_PEERS names the peers' scripts folder)",
            path.display()
        );
    }
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
    };
    let missing: Vec<&str> = ["rspamd", "rspamc", "spamd", "spamc"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "--peers: {} not installed (apt-get install -y rspamd spamd spamc)",
        missing.join(", ")
    );
    Ok(scripts)
}

/// The content filter: the gateway's CPU per message with the rules stage on, latency and
/// throughput; with `peers`, rspamd and spamd on the same corpus in the same run.
fn content(
    name: &str,
    dir: &Path,
    sc: &Scenario,
    out: &Path,
    peers: bool,
    profile: bool,
) -> anyhow::Result<()> {
    // Checked first: a peer missing is said before the gateway's runs, not minutes after.
    let scripts = peers.then(peer_scripts).transpose()?;
    let bin = bin_dir()?;
    let (corpus_root, corpus) = corpus_dirs(sc);
    let load = Load {
        corpus: &corpus,
        seed: sc.seed,
    };
    let sink_port = free_port()?;
    let _sink = start_sink(&bin, sink_port, out)?;
    let sessions_max = sc.sessions.iter().copied().max().unwrap_or(8);
    let mut failures = Vec::new();
    // Scaling: the same load on one shard (pinned to CPU 0), then on the plan's shards.
    let mut base = std::fs::read_to_string(dir.join(&sc.gateway_config))?;
    if !sc.bayes_spam.is_empty() {
        let db = out.join("bayes");
        let mut cmd = Command::new(bin.join("mxgate"));
        cmd.args(["bayes", "learn", "--db"]).arg(&db);
        for f in &sc.bayes_spam {
            cmd.arg("--spam").arg(corpus_root.join(f));
        }
        for f in &sc.bayes_ham {
            cmd.arg("--ham").arg(corpus_root.join(f));
        }
        let st = cmd.stdout(Stdio::null()).status()?;
        anyhow::ensure!(st.success(), "mxgate bayes learn failed");
        base = base.replace("@BAYES_DB@", &db.display().to_string());
    }
    let config = out.join("gateway.toml");
    std::fs::write(&config, &base)?;
    let one_shard = out.join("gateway-1-shard.toml");
    std::fs::write(
        &one_shard,
        base.replacen("[server]\n", "[server]\nshards = 1\ncpus = [0]\n", 1),
    )?;
    let mut scaling = Vec::new();
    {
        let port = free_port()?;
        let mx = start_gateway(&bin, &one_shard, port, sink_port, out)?;
        loadgen(&bin, port, &load, sessions_max, 500, sc.per_conn)?;
        let mut rate = vec![];
        for _ in 0..sc.reps {
            let r = loadgen(&bin, port, &load, sessions_max, sc.count, sc.per_conn)?;
            check(&r, sc, "mxgate, 1 shard", &mut failures);
            rate.push(r["msgs_per_s"].as_f64().unwrap_or(0.0));
        }
        drop(mx);
        scaling.push(json!({"shards": 1, "msgs_per_s": median(rate)}));
    }
    let mx_port = free_port()?;
    let mx = start_gateway(&bin, &config, mx_port, sink_port, out)?;
    // Warm-up: matchers compiled on first use, caches filled.
    loadgen(&bin, mx_port, &load, sessions_max, 500, sc.per_conn)?;
    let recording = if profile {
        Some(flame::Recording::start(mx.pid(), out)?)
    } else {
        None
    };
    let mut rows = Vec::new();
    for &s in &sc.sessions {
        let (mut rate, mut p50, mut p99, mut cpu) = (vec![], vec![], vec![], vec![]);
        let mut gateway_says = Value::Null;
        for rep in 0..sc.reps {
            eprintln!("content: sessions {s}, rep {}/{}", rep + 1, sc.reps);
            let m0 = mx.metrics()?;
            let c0 = cpu_secs(mx.pid())?;
            let r = loadgen(&bin, mx_port, &load, s, sc.count, sc.per_conn)?;
            let c1 = cpu_secs(mx.pid())?;
            gateway_says = run_metrics(&m0, &mx.metrics()?);
            check(&r, sc, "mxgate", &mut failures);
            check_verdicts(
                &gateway_says,
                sc,
                &format!("mxgate, sessions {s}, run {}", rep + 1),
                &mut failures,
            );
            rate.push(r["msgs_per_s"].as_f64().unwrap_or(0.0));
            p50.push(r["latency_ms"]["p50"].as_f64().unwrap_or(0.0));
            p99.push(r["latency_ms"]["p99"].as_f64().unwrap_or(0.0));
            cpu.push(1000.0 * (c1 - c0) / r["accepted"].as_f64().unwrap_or(1.0).max(1.0));
        }
        rows.push(json!({
            "sessions": s,
            "mxgate_msgs_per_s": median(rate),
            "mxgate_p50_ms": median(p50),
            "mxgate_p99_ms": median(p99),
            "mxgate_cpu_ms_per_msg": median(cpu),
            "mxgate_rss_kib": rss_kib(mx.pid())?,
            "mxgate_peak_rss_kib": status_kib(mx.pid(), "VmHWM:")?,
            "runs": sc.reps,
            "last_run": gateway_says,
        }));
    }
    if let Some(r) = recording {
        let svg = r.finish(&format!("mxgate, scenario {name}"))?;
        eprintln!("{name}: flame graph in {}", svg.display());
    }
    // Latency at 80 % of the throughput just measured.
    let max_rate = rows
        .last()
        .and_then(|r| r["mxgate_msgs_per_s"].as_f64())
        .unwrap_or(0.0);
    let mut at80 = vec![];
    for _ in 0..sc.reps {
        let r = loadgen_at(
            &bin,
            mx_port,
            &load,
            sessions_max,
            sc.count,
            sc.per_conn,
            Some(0.8 * max_rate),
        )?;
        check(&r, sc, "mxgate at 80 %", &mut failures);
        at80.push(r["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN));
    }
    let p99_at_80 = median(at80);
    // The curve: offered load against throughput, latency and temporary failures.
    let mut curve = Vec::new();
    for &f in &sc.sweep {
        let offered = f * max_rate;
        eprintln!("{name}: offered {offered:.0} msg/s ({:.0} %)", 100.0 * f);
        let r = loadgen_at(
            &bin,
            mx_port,
            &load,
            sc.sweep_sessions.unwrap_or(sessions_max),
            sc.count,
            sc.per_conn,
            Some(offered),
        )?;
        let tempfail: f64 = r["replies"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with('4'))
            .filter_map(|(_, v)| v.as_f64())
            .sum::<f64>()
            + 0.0; // no -0 for none
        curve.push(json!({
            "offered_msgs_per_s": offered,
            "msgs_per_s": r["msgs_per_s"],
            "p50_ms": r["latency_ms"]["p50"],
            "p99_ms": r["latency_ms"]["p99"],
            "tempfail": tempfail,
            "accepted": r["accepted"],
            "messages": r["messages"],
        }));
    }
    if !curve.is_empty() {
        let pts = |k: &str| -> Vec<(f64, f64)> {
            curve
                .iter()
                .map(|c| {
                    (
                        c["offered_msgs_per_s"].as_f64().unwrap_or(0.0),
                        c[k].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        };
        std::fs::write(
            out.join("throughput.svg"),
            svg_plot(
                "Throughput against offered load",
                "offered msg/s",
                "msg/s",
                &pts("msgs_per_s"),
            ),
        )?;
        std::fs::write(
            out.join("latency.svg"),
            svg_plot(
                "p99 latency against offered load",
                "offered msg/s",
                "p99 ms",
                &pts("p99_ms"),
            ),
        )?;
    }
    drop(mx);
    scaling.push(json!({"shards": "plan", "msgs_per_s": max_rate}));
    let mut peer_rows = Vec::new();
    if let Some(scripts) = scripts {
        for (name, script) in PEERS {
            let dest = out.join(name);
            eprintln!("content: peer {name}");
            let status = Command::new("bash")
                .arg(scripts.join(script))
                .arg(&corpus_root)
                .arg(&dest)
                .env("REPS", "1")
                .env("CONC", sessions_max.to_string())
                .env("MIN_SECONDS", "30")
                .env("VERDICT_PASS", "0")
                .env("RSPAMC_CHECK", "0")
                .env("QUIET_MAX_WAIT", "5")
                .env("WORK", out.join(format!("{name}-work")))
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "{script} failed");
            let r: Value = serde_json::from_str(&std::fs::read_to_string(
                dest.join(format!("rep1_c{sessions_max}.json")),
            )?)?;
            peer_rows.push(json!({
                "peer": name,
                "sessions": sessions_max,
                "msgs_per_s": r["msgs_per_s"],
                "p50_ms": r["latency_ms"]["p50"],
                "p95_ms": r["latency_ms"]["p95"],
                "cpu_ms_per_msg": r["daemon_cpu_ms_per_msg"],
            }));
        }
    }
    let mx_cpu = rows
        .last()
        .and_then(|r| r["mxgate_cpu_ms_per_msg"].as_f64())
        .unwrap_or(f64::NAN);
    for p in &mut peer_rows {
        let ratio = p["cpu_ms_per_msg"].as_f64().unwrap_or(f64::NAN) / mx_cpu;
        p["peer_cpu_over_mxgate_cpu"] = json!(ratio);
    }
    let results = json!({
        "scenario": name,
        "curve": curve,
        "corpus": sc.corpus,
        "count_per_run": sc.count,
        "stages": "hops, rules (full SpamAssassin ruleset and native eval tests); no Bayes, AV, OCR, DNS",
        "rows": rows,
        "p99_ms_at_80_percent": p99_at_80,
        "offered_at_80_percent": 0.8 * max_rate,
        "scaling": scaling,
        "peers": peer_rows,
        "failures": failures,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut report = format!(
        "### {name}: {} messages per run, corpus {}, median of {} runs\n\n\
         | sessions | mxgate msg/s | p50 ms | p99 ms | mxgate CPU ms/msg | RSS KiB | peak RSS KiB |\n|---:|---:|---:|---:|---:|---:|---:|\n",
        sc.count, results["corpus"], sc.reps
    );
    for row in &rows {
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        report.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.3} | {} | {} |\n",
            row["sessions"],
            f("mxgate_msgs_per_s"),
            f("mxgate_p50_ms"),
            f("mxgate_p99_ms"),
            f("mxgate_cpu_ms_per_msg"),
            row["mxgate_rss_kib"],
            row["mxgate_peak_rss_kib"]
        ));
    }
    if let Some(last) = rows.last().map(|r| &r["last_run"]) {
        let list = |v: &Value, unit: &str, prec: usize| -> String {
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, x)| format!("{k} {:.*}{unit}", prec, x.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        report.push_str(&format!(
            "\nThe gateway's metrics over the last run: verdicts {}; per stage, ms per message: {}.\n",
            list(&last["verdicts"], "", 0),
            list(&last["stage_ms_per_msg"], "", 3)
        ));
    }
    report.push_str(&format!(
        "\np99 at 80 % of that throughput ({:.0} msg/s offered): **{:.2} ms**. One shard on CPU 0: {:.0} msg/s; the plan's shards: {:.0} msg/s ({:.2}x).\n",
        0.8 * max_rate,
        p99_at_80,
        scaling[0]["msgs_per_s"].as_f64().unwrap_or(f64::NAN),
        max_rate,
        max_rate / scaling[0]["msgs_per_s"].as_f64().unwrap_or(f64::NAN)
    ));
    if let Some(c) = results["curve"].as_array().filter(|c| !c.is_empty()) {
        report.push_str(
            "\n| offered msg/s | msg/s | p50 ms | p99 ms | 4xx | accepted |\n|---:|---:|---:|---:|---:|---:|\n",
        );
        for p in c {
            let f = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
            report.push_str(&format!(
                "| {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
                f("offered_msgs_per_s"),
                f("msgs_per_s"),
                f("p50_ms"),
                f("p99_ms"),
                f("tempfail"),
                f("accepted")
            ));
        }
        report.push_str("\nPlots: `throughput.svg`, `latency.svg` in the output folder.\n");
    }
    if !peer_rows.is_empty() {
        report.push_str("\n| peer (same corpus, same run) | msg/s | p50 ms | p95 ms | CPU ms/msg | peer CPU / mxgate CPU |\n|---|---:|---:|---:|---:|---:|\n");
        for p in &peer_rows {
            let f = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
            report.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
                p["peer"].as_str().unwrap_or(""),
                f("msgs_per_s"),
                f("p50_ms"),
                f("p95_ms"),
                f("cpu_ms_per_msg"),
                f("peer_cpu_over_mxgate_cpu")
            ));
        }
    }
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    println!("results in {}", out.display());
    if !failures.is_empty() {
        bail!("correctness check failed: {failures:?}");
    }
    Ok(())
}

/// A line chart as SVG: the points joined, both axes from 0 with five ticks.
fn svg_plot(title: &str, xlabel: &str, ylabel: &str, pts: &[(f64, f64)]) -> String {
    let (w, h, m) = (640.0, 400.0, 60.0);
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| m + v / xmax * (w - 2.0 * m);
    let y = |v: f64| h - m - v / ymax * (h - 2.0 * m);
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    ));
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s.push_str(&format!(
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    ));
    s.push_str(&format!(
        "<line x1=\"{m}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n",
        h - m,
        w - m
    ));
    s.push_str(&format!(
        "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m
    ));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\n",
        w / 2.0,
        h - 15.0
    ));
    s.push_str(&format!(
        "<text x=\"16\" y=\"{0}\" transform=\"rotate(-90 16 {0})\" text-anchor=\"middle\">{ylabel}</text>\n",
        h / 2.0
    ));
    for i in 0..=5 {
        let (xv, yv) = (xmax * f64::from(i) / 5.0, ymax * f64::from(i) / 5.0);
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{xv:.0}</text>\n",
            x(xv),
            h - m + 16.0
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.1}</text>\n",
            m - 6.0,
            y(yv) + 4.0
        ));
    }
    let path: Vec<String> = pts
        .iter()
        .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
        .collect();
    s.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" ")
    ));
    for &(a, b) in pts {
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1f5fa8\"/>\n",
            x(a),
            y(b)
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// The bundled sink on `port`.
fn start_sink(bin: &Path, port: u16, out: &Path) -> anyhow::Result<Daemon> {
    Daemon::start(
        "sink",
        Command::new(bin.join("mxgate-loadgen")).args([
            "sink",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]),
        port,
        out,
    )
}

/// The gateway with `config`, on `port`, relaying to the sink on `sink_port`.
/// The gateway under test, with its metrics endpoint.
struct Gateway {
    daemon: Daemon,
    metrics_port: u16,
}

impl Gateway {
    fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The gateway's counters (`/metrics`), by name with labels.
    fn metrics(&self) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect())
    }
}

fn start_gateway(
    bin: &Path,
    config: &Path,
    port: u16,
    sink_port: u16,
    out: &Path,
) -> anyhow::Result<Gateway> {
    let metrics_port = free_port()?;
    let daemon = Daemon::start(
        "mxgate",
        Command::new(bin.join("mxgate")).args([
            "serve",
            "--config",
            &config.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--relay",
            &format!("127.0.0.1:{sink_port}"),
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ]),
        port,
        out,
    )?;
    Ok(Gateway {
        daemon,
        metrics_port,
    })
}

/// What the gateway's metrics say about one run: messages per verdict, and per stage the mean
/// milliseconds per message that went through it.
fn run_metrics(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Value {
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let mut verdicts = serde_json::Map::new();
    for v in ["clean", "spam", "rejected", "deferred", "discarded"] {
        verdicts.insert(
            v.into(),
            json!(delta(&format!("mxgate_messages_total{{verdict=\"{v}\"}}"))),
        );
    }
    let mut stages = serde_json::Map::new();
    for st in ["mime", "av_ocr", "dns", "rules", "bayes"] {
        let runs = delta(&format!("mxgate_stage_runs_total{{stage=\"{st}\"}}"));
        if runs > 0.0 {
            let secs = delta(&format!("mxgate_stage_seconds_total{{stage=\"{st}\"}}"));
            stages.insert(st.into(), json!(1000.0 * secs / runs));
        }
    }
    json!({"verdicts": verdicts, "stage_ms_per_msg": stages})
}

/// Checks a run's verdict counts against the scenario's expected shares.
fn check_verdicts(m: &Value, sc: &Scenario, what: &str, failures: &mut Vec<String>) {
    let total: f64 = m["verdicts"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_f64())
        .sum();
    for (verdict, [lo, hi]) in &sc.expect.verdicts {
        let n = m["verdicts"][verdict].as_f64().unwrap_or(0.0);
        let share = if total > 0.0 { n / total } else { 0.0 };
        if share < *lo || share > *hi {
            failures.push(format!(
                "{what}: {verdict} {n} of {total} ({:.1} %), expected {:.1}-{:.1} %",
                100.0 * share,
                100.0 * lo,
                100.0 * hi
            ));
        }
    }
}

fn check(v: &Value, sc: &Scenario, what: &str, failures: &mut Vec<String>) {
    let accepted = v["accepted"].as_f64().unwrap_or(0.0);
    let want = sc.expect.accepted_fraction * sc.count as f64;
    if accepted < want {
        failures.push(format!(
            "{what}: {accepted} of {} accepted (want {want})",
            sc.count
        ));
    }
}

fn report(r: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "### relay: {} messages per run, corpus {} (mean {} bytes), median of {} runs\n\n",
        r["count_per_run"], r["corpus"], r["mean_message_bytes"], r["rows"][0]["runs"]
    ));
    s.push_str("| sessions | direct msg/s | mxgate msg/s | relay/direct | direct p99 ms | mxgate p99 ms | mxgate CPU ms/msg | smtp-sink CPU ms/msg | CPU ratio | smtp-source→smtp-sink msg/s | mxgate RSS KiB |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in r["rows"].as_array().into_iter().flatten() {
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.4} | {:.4} | {:.2} | {:.0} | {} |\n",
            row["sessions"],
            f("direct_msgs_per_s"),
            f("mxgate_msgs_per_s"),
            f("relay_over_direct"),
            f("direct_p99_ms"),
            f("mxgate_p99_ms"),
            f("mxgate_cpu_ms_per_msg"),
            f("smtp_sink_cpu_ms_per_msg"),
            f("mxgate_cpu_over_smtp_sink_cpu"),
            f("smtp_source_to_smtp_sink_msgs_per_s"),
            row["mxgate_rss_kib"],
        ));
    }
    s.push_str(&format!(
        "\nIdle connections: {} held, RSS {} → {} KiB: **{:.2} KiB per connection**.\n",
        r["idle"]["connections"],
        r["idle"]["rss_before_kib"],
        r["idle"]["rss_after_kib"],
        r["idle"]["kib_per_connection"].as_f64().unwrap_or(f64::NAN)
    ));
    s
}
