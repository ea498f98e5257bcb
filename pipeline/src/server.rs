//! Shards: one glommio executor per core, each with its own SO_REUSEPORT listeners, its own
//! connections, its own relay pool and its own counters. Nothing is shared between shards on
//! the hot path; the configuration snapshot is swapped on reload and read by each shard from
//! its watcher task, not per connection.
//!
//! Lifecycle, driven by [`Control`] from the signal thread:
//! * **SIGHUP**: the configuration is read again and validated; a good one becomes the new
//!   snapshot, which new connections use (open ones finish on the old). A bad one is logged and
//!   ignored. Listeners stay up: no connection is dropped.
//! * **SIGTERM**: drain. Shards stop accepting, idle sessions get `421 4.3.2` at once, sessions
//!   inside a transaction finish it and then get `421`; after `shutdown_grace_secs` whatever is
//!   left is cut.
//! * **SIGINT**: stop now: every connection is cut. A message whose end of data was not yet
//!   answered with 250 is not lost: the client got no 250 and will send it again.
//!
//! One snapshot change comes from no signal: when a start (or a reload) found no final rule
//! databases in the cache, [`Control::finish_rules`] builds them in the background and
//! publishes the same snapshot with them, as a reload would.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mxgate_core::smtp::Limits;

use crate::metrics::ShardStats;
use crate::relay::Relay;
use crate::rt::{self, TcpListener};
use crate::settings::{self, Overrides, Snapshot};

/// Process-wide run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Serving.
    Running = 0,
    /// Draining (SIGTERM).
    Draining = 1,
    /// Stopping now (SIGINT, or the drain deadline passed).
    Stopping = 2,
}

/// What the signal thread and the shards share: the run state and the current snapshot.
pub struct Control {
    state: AtomicU8,
    generation: AtomicU64,
    snapshot: Mutex<Arc<Snapshot>>,
    overrides: Overrides,
}

impl Control {
    /// Control around the first snapshot.
    pub fn new(snapshot: Snapshot, overrides: Overrides) -> Arc<Control> {
        Arc::new(Control {
            state: AtomicU8::new(RunState::Running as u8),
            generation: AtomicU64::new(0),
            snapshot: Mutex::new(Arc::new(snapshot)),
            overrides,
        })
    }

    /// The run state.
    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Acquire) {
            0 => RunState::Running,
            1 => RunState::Draining,
            _ => RunState::Stopping,
        }
    }

    /// Moves the run state forward (never back).
    pub fn set_state(&self, s: RunState) {
        self.state.fetch_max(s as u8, Ordering::AcqRel);
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the configuration again; on success the shards pick it up within 100 ms. The new
    /// snapshot is built at low priority, as the final databases are (its rules load their
    /// databases and compile every matcher, on every core): the shards keep serving with the
    /// old one meanwhile and take the CPU they need first.
    pub fn reload(self: &Arc<Self>) -> anyhow::Result<()> {
        let prev = self.snapshot();
        let path = prev.path.clone();
        let cfg = settings::load(path.as_deref(), &self.overrides)?;
        let snap = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("mxgate-reload".into())
                .spawn_scoped(s, || {
                    lower_thread_priority();
                    Snapshot::rebuild(cfg, path, Some(&prev))
                })?
                .join()
                .map_err(|_| anyhow::anyhow!("reload: building the new snapshot panicked"))?
        })?;
        self.publish(snap);
        self.finish_rules();
        Ok(())
    }

    /// Makes `snap` the current snapshot. The generation moves under the lock, so that a
    /// background build that saw the generation before can tell it is stale.
    fn publish(&self, snap: Snapshot) {
        let mut cur = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(snap);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// When the current snapshot's rules are a first start's (`[rules] startup_chunk`: the
    /// cache had no final databases), builds the final ones on a background thread at low
    /// priority and swaps them in. Connections keep the snapshot they started with; the first
    /// start's engine goes when the last of them ends. Dropped when a reload came first (the
    /// reload finishes its own rules), and kept on a failure (the first start's databases are
    /// complete, only slower).
    pub fn finish_rules(self: &Arc<Self>) {
        // The snapshot and its generation read together (both change under the lock).
        let (snap, seen) = {
            let cur = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            (Arc::clone(&cur), self.generation.load(Ordering::Acquire))
        };
        if !snap.chain.rules_provisional() {
            return;
        }
        let control = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("mxgate-rules-final".into())
            .spawn(move || {
                lower_thread_priority();
                let started = Instant::now();
                let chain = match snap.chain.with_final_rules(&snap.config) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("rules: the final databases were not built, the first start's stay: {e:#}");
                        return;
                    }
                };
                let mut cur = control.snapshot.lock().unwrap_or_else(|p| p.into_inner());
                if control.generation.load(Ordering::Acquire) != seen {
                    tracing::info!("rules: final databases left unused, a reload came first");
                    return;
                }
                *cur = Arc::new(snap.with_chain(chain));
                control.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "rules: final databases in use"
                );
            });
        if let Err(e) = spawned {
            tracing::warn!("rules: no thread for the final databases: {e}");
        }
    }
}

/// Lowers the calling thread's scheduling priority (threads it starts inherit it), so a
/// background compile takes what the shards leave.
fn lower_thread_priority() {
    // SAFETY: setpriority on the calling thread (Linux applies PRIO_PROCESS to one thread id).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// The snapshot as one shard holds it: cloning is a shard-local reference count.
pub struct ShardSnap {
    /// The shared snapshot.
    pub snap: Arc<Snapshot>,
}

/// `Limits` of a shard snapshot, for `Session<L>`.
#[derive(Clone)]
pub struct SnapLimits(pub Rc<ShardSnap>);

impl std::ops::Deref for SnapLimits {
    type Target = Limits;
    fn deref(&self) -> &Limits {
        &self.0.snap.limits
    }
}

/// A one-shot, shard-local event: set once, wakes every waiter.
#[derive(Default)]
pub struct Flag {
    set: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Flag {
    /// Sets it and wakes the waiters.
    pub fn set(&self) {
        self.set.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once set.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            if self.set.get() {
                return Poll::Ready(());
            }
            let mut w = self.wakers.borrow_mut();
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// One open connection, as the shard tracks it for draining.
struct Tracked {
    fd: RawFd,
    busy: Rc<Cell<bool>>,
}

/// One shard's state. Lives on its executor thread only.
pub struct Shard {
    /// Shard number.
    pub id: usize,
    control: Arc<Control>,
    current: RefCell<Rc<ShardSnap>>,
    generation: Cell<u64>,
    /// Counters.
    pub stats: Arc<ShardStats>,
    /// The relay pool.
    pub relay: Rc<Relay>,
    conns: RefCell<HashMap<u64, Tracked>>,
    next_conn: Cell<u64>,
    draining: Cell<bool>,
    stop_accepting: Flag,
    msg_seq: Cell<u64>,
    /// Messages waiting for the rules, scanned together.
    pub rules_batch: crate::batch::RulesBatcher,
}

/// Unregisters a connection when its session ends.
pub struct ConnGuard {
    shard: Rc<Shard>,
    id: u64,
    /// Set while the session is inside a transaction (draining leaves those alone).
    pub busy: Rc<Cell<bool>>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shard.conns.borrow_mut().remove(&self.id);
        self.shard.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shard {
    /// Sessions inside a transaction (or with input not yet read).
    pub fn in_transaction(&self) -> usize {
        self.conns
            .borrow()
            .values()
            .filter(|t| t.busy.get())
            .count()
    }

    /// The snapshot new connections use.
    pub fn current(&self) -> Rc<ShardSnap> {
        self.current.borrow().clone()
    }

    /// Whether the shard is draining (SIGTERM).
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// A message id unique over the process lifetime: start time, shard, sequence.
    pub fn next_message_id(&self) -> String {
        let n = self.msg_seq.get() + 1;
        self.msg_seq.set(n);
        format!("{:X}{:02X}{:06X}", START.with(|s| *s), self.id, n)
    }

    /// Registers a connection.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> ConnGuard {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        let busy = Rc::new(Cell::new(false));
        self.conns.borrow_mut().insert(
            id,
            Tracked {
                fd,
                busy: busy.clone(),
            },
        );
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        ConnGuard {
            shard: self.clone(),
            id,
            busy,
        }
    }

    fn active(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Shuts down the sockets of idle connections (or all), so their pending reads end.
    fn cut(&self, all: bool) {
        for t in self.conns.borrow().values() {
            if all || !t.busy.get() {
                let how = if all { libc::SHUT_RDWR } else { libc::SHUT_RD };
                // SAFETY: fd belongs to a live connection tracked by this shard.
                unsafe { libc::shutdown(t.fd, how) };
            }
        }
    }

    /// Runs this shard's partition of the greylist, unless it already runs (a reload keeps the
    /// greylist when its store stays).
    fn serve_greylist(&self, snap: &Snapshot) {
        if let Some(owner) = snap.chain.greylist().and_then(|g| g.serve(self.id)) {
            rt::spawn(owner);
        }
    }

    fn refresh(&self) {
        let g = self.control.generation.load(Ordering::Acquire);
        if g != self.generation.get() {
            self.generation.set(g);
            let snap = self.control.snapshot();
            self.serve_greylist(&snap);
            snap.chain.warm_shard(Some(self.id));
            *self.current.borrow_mut() = Rc::new(ShardSnap { snap });
            tracing::info!(shard = self.id, generation = g, "configuration reloaded");
        }
    }
}

thread_local! {
    static START: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
}

/// Runs one shard until it has drained or was stopped.
pub async fn shard_main(
    id: usize,
    control: Arc<Control>,
    stats: Arc<ShardStats>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let snap = control.snapshot();
    // Before listening: the first message should not pay for this thread's first scan.
    snap.chain.warm_shard(Some(id));
    let shard = Rc::new(Shard {
        id,
        control: control.clone(),
        current: RefCell::new(Rc::new(ShardSnap { snap: snap.clone() })),
        generation: Cell::new(control.generation.load(Ordering::Acquire)),
        relay: Relay::new(stats.clone()),
        rules_batch: crate::batch::RulesBatcher::new(snap.config.rules.batch, stats.clone()),
        stats,
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        draining: Cell::new(false),
        stop_accepting: Flag::default(),
        msg_seq: Cell::new(0),
    });
    let mut listeners = Vec::new();
    for addr in &snap.config.server.listen {
        match TcpListener::bind(addr.as_str()) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: cannot listen on {addr}: {e}")));
                return;
            }
        }
    }
    shard.serve_greylist(&snap);
    let _ = ready.send(Ok(()));
    let accepting = Rc::new(Cell::new(listeners.len()));
    for l in listeners {
        let (shard, accepting) = (shard.clone(), accepting.clone());
        rt::spawn(async move {
            accept_loop(shard, l).await;
            accepting.set(accepting.get() - 1);
        });
    }
    // The watcher: configuration generations and the run state, every 100 ms.
    let mut deadline: Option<Instant> = None;
    loop {
        rt::sleep(Duration::from_millis(100)).await;
        shard.refresh();
        if let Some(g) = shard.current().snap.chain.greylist() {
            let held = g.held_by(id) as u64;
            shard.stats.greylist_triplets.store(held, Ordering::Relaxed);
        }
        match control.state() {
            RunState::Running => continue,
            RunState::Draining => {
                if !shard.draining.get() {
                    shard.draining.set(true);
                    shard.stop_accepting.set();
                    let grace = shard.current().snap.config.server.shutdown_grace_secs;
                    deadline = Some(Instant::now() + Duration::from_secs(grace));
                    tracing::info!(shard = id, connections = shard.active(), "draining");
                }
                // Idle sessions are woken (their read ends) and answer 421 themselves.
                shard.cut(false);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    shard.cut(true);
                }
            }
            RunState::Stopping => {
                shard.draining.set(true);
                shard.stop_accepting.set();
                shard.cut(true);
            }
        }
        if shard.active() == 0 && accepting.get() == 0 {
            break;
        }
    }
    shard.relay.clear();
    tracing::info!(shard = id, "stopped");
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            shard.stop_accepting.wait().await;
            None
        };
        let res = futures_lite::future::or(stop, accept).await;
        match res {
            None => break,
            Some(Ok(stream)) => {
                let max = shard.current().snap.config.server.max_connections;
                if shard.active() >= max {
                    shard.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let stats = shard.stats.clone();
                    rt::spawn(async move {
                        let mut c = crate::conn::Conn::Plain(stream);
                        let mut w = Vec::new();
                        mxgate_core::smtp::session::TOO_MANY_CONNECTIONS.write_to(&mut w);
                        stats.reply(421);
                        let _ = c.write_all_timeout(&w, Duration::from_secs(5)).await;
                    });
                    continue;
                }
                rt::spawn(crate::session::serve(shard.clone(), stream));
            }
            Some(Err(e)) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                rt::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
