//! The rules stage for the messages a shard has ready at once.
//!
//! The rule engine's time is mostly spent waiting on the CPU's caches: about a hundred
//! Hyperscan databases, their engines' code and the confirming automata, each run for every
//! message. Scanned together, each is brought into the caches once for all of them
//! ([`rules::Engine::scan_batch`]): a third less CPU a message in batches of 16 (`mxgate scan
//! --batch`). A shard's sessions reach the rules one at a time, so the first to arrive leads:
//! it lets the shard's other ready tasks run (sessions whose data and offloaded work are
//! complete join the queue) and, while other sessions of the shard are inside a transaction,
//! waits for them up to [`WAIT`]; then it scans everything queued, up to a batch's size, and
//! hands each session its outcome. With no other transaction open the batch is that one
//! message, after one turn of the shard's task queue. How full the batches are depends on the
//! sessions a shard serves at once: `mxgate_rules_batched_messages_total` over
//! `mxgate_rules_batches_total` is the mean.
//!
//! A message over `[rules] offload_above` skips the queue: its rules run on a thread of a small
//! pool of their own ([`offload`]), so that the tens of milliseconds a big message takes do not
//! hold up the shard's other sessions; the kernel shares the core between that thread and the
//! shard. When that pool is busy, the message joins the queue as any other.
//!
//! A session is moved out of its [`Context`] into a [`Job`] (its envelope, body, offloaded
//! results and network facts) and back, so the leader owns what it scans and a session that
//! goes away while queued leaves nothing dangling. Should the leader itself go away, a waiting
//! session takes over.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxgate_core::pool::Pool;
use mxgate_core::smtp::Envelope;
use mxgate_scanners::net::Facts;

use crate::metrics::{ShardStats, StageTimes};
use crate::offload::Offloaded;
use crate::settings::Snapshot;
use crate::stages::Context;

/// Longest a leader waits for the shard's other sessions in a transaction to join.
const WAIT: Duration = Duration::from_millis(3);

/// What the rules of one message read, moved out of its session's [`Context`] while queued.
pub struct Job {
    envelope: Envelope,
    body: Bytes,
    client: SocketAddr,
    shard: Option<usize>,
    carried: Carried,
}

/// The part of a [`Context`] a job carries and gives back: the offloaded results, network
/// facts and stage times in, those and the rules' outcome out.
#[derive(Default)]
struct Carried {
    offloaded: Offloaded,
    net: Option<Facts>,
    times: StageTimes,
    rules_done: Option<(mxgate_scanners::rules::Outcome, Duration)>,
}

impl Carried {
    /// Trades places with the context's.
    fn swap(&mut self, ctx: &mut Context<'_>) {
        std::mem::swap(&mut self.offloaded, &mut ctx.offloaded);
        std::mem::swap(&mut self.net, &mut ctx.net);
        std::mem::swap(&mut self.times, &mut ctx.times);
        std::mem::swap(&mut self.rules_done, &mut ctx.rules_done);
    }
}

impl Job {
    /// Takes a context's offloaded results, network facts and stage times (the rest is
    /// copied).
    pub fn take(ctx: &mut Context<'_>) -> Job {
        let mut carried = Carried::default();
        carried.swap(ctx);
        Job {
            envelope: ctx.envelope.clone(),
            body: ctx.body.clone(),
            client: ctx.client,
            shard: ctx.shard,
            carried,
        }
    }

    /// Gives a context back what [`Job::take`] took, with the rules' outcome.
    pub fn restore(mut self, ctx: &mut Context<'_>) {
        self.carried.swap(ctx);
    }

    /// A context over the job's message holding what the job carries, for the rules to run
    /// on; the carried part takes it back with the outcome ([`Carried::swap`] again).
    fn lend(&mut self) -> (Context<'_>, &mut Carried) {
        let Job {
            envelope,
            body,
            client,
            shard,
            carried,
        } = self;
        let mut ctx = Context::new(envelope, body, *client);
        ctx.shard = *shard;
        carried.swap(&mut ctx);
        (ctx, carried)
    }
}

#[derive(Default)]
struct Slot {
    job: RefCell<Option<Job>>,
    waker: RefCell<Option<Waker>>,
}

struct Queued {
    snap: Arc<Snapshot>,
    job: Job,
    slot: Rc<Slot>,
}

/// A shard's queue of messages waiting for the rules.
pub struct RulesBatcher {
    queue: RefCell<Vec<Queued>>,
    leading: Cell<bool>,
    /// The leader, while it waits for the queue to grow.
    leader: RefCell<Option<Waker>>,
    max: usize,
    stats: Arc<ShardStats>,
}

impl RulesBatcher {
    /// A queue scanning up to `max` messages together (1: each alone), counting its batches
    /// in `stats`.
    pub fn new(max: usize, stats: Arc<ShardStats>) -> RulesBatcher {
        RulesBatcher {
            queue: RefCell::new(Vec::new()),
            leading: Cell::new(false),
            leader: RefCell::new(None),
            max: max.max(1),
            stats,
        }
    }

    /// Runs the rules of `snap`'s chain on the message of `ctx`, together with the shard's
    /// other messages ready for them, or off the shard when it is big;
    /// [`crate::stages::Chain::run`] then finds the outcome in the context. `false` when what
    /// the context carried was lost with a worker that died (the message must be deferred).
    pub async fn run(
        &self,
        snap: &Arc<Snapshot>,
        ctx: &mut Context<'_>,
        in_transaction: &dyn Fn() -> usize,
    ) -> bool {
        if snap.chain.rules_for(ctx.shard).is_none() {
            return true;
        }
        let above = snap.config.rules.offload_above;
        if above > 0 && ctx.body.len() > above {
            let submitted = match offload() {
                Some(pool) => pool.try_submit((Arc::clone(snap), Job::take(ctx))),
                None => Err((Arc::clone(snap), Job::take(ctx))),
            };
            match submitted {
                Ok(ticket) => {
                    self.stats.rules_offloaded.fetch_add(1, Relaxed);
                    return match ticket.await {
                        Ok(job) => {
                            job.restore(ctx);
                            true
                        }
                        Err(_) => false,
                    };
                }
                // The pool is busy: the shard scans it after all.
                Err((_, job)) => job.restore(ctx),
            }
        }
        if self.max == 1 {
            return true; // `run` scans it alone
        }
        let slot = Rc::new(Slot::default());
        self.queue.borrow_mut().push(Queued {
            snap: Arc::clone(snap),
            job: Job::take(ctx),
            slot: Rc::clone(&slot),
        });
        if let Some(w) = self.leader.borrow_mut().take() {
            w.wake();
        }
        loop {
            if let Some(job) = slot.job.borrow_mut().take() {
                job.restore(ctx);
                return true;
            }
            if !self.leading.get() {
                self.lead(in_transaction).await;
                continue;
            }
            Wait {
                slot: &slot,
                leading: &self.leading,
            }
            .await;
        }
    }

    /// Lets the shard's ready tasks join the queue, then scans it empty.
    async fn lead(&self, in_transaction: &dyn Fn() -> usize) {
        self.leading.set(true);
        let guard = Leading(self);
        let started = Instant::now();
        futures_lite::future::yield_now().await;
        loop {
            let queued = self.queue.borrow().len();
            let waited = started.elapsed();
            if queued >= self.max || in_transaction() <= queued || waited >= WAIT {
                break;
            }
            // Woken when a session joins, or at the deadline.
            crate::rt::timeout(
                WAIT - waited,
                Grew {
                    batcher: self,
                    seen: queued,
                },
            )
            .await;
        }
        loop {
            let batch: Vec<Queued> = {
                let mut q = self.queue.borrow_mut();
                let n = q.len().min(self.max);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            self.stats.rules_batches.fetch_add(1, Relaxed);
            self.stats
                .rules_batched
                .fetch_add(batch.len() as u64, Relaxed);
            scan(batch);
        }
        drop(guard);
    }
}

/// The pool a big message's job goes to.
type BigPool = Pool<(Arc<Snapshot>, Job), Job>;

/// Starts the big-message pool from the calling thread, whose CPUs its threads inherit: the
/// gateway calls it before the shards start, as they are pinned to one CPU each.
pub fn start_offload() {
    let _ = offload();
}

/// Threads for the rules of big messages, one for every two CPUs: the process's one pool,
/// started by [`start_offload`] or else on first use (`None` when no thread could be started:
/// the shards scan them).
fn offload() -> Option<&'static BigPool> {
    static POOL: OnceLock<Option<BigPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = Pool::new(
            "mxgate-rules-big",
            (cpus / 2).max(1),
            64,
            |_| (),
            |_, (snap, mut job): (Arc<Snapshot>, Job)| {
                scan_alone(&snap, &mut job);
                job
            },
        );
        pool.map_err(|e| tracing::warn!("rules: no threads for big messages: {e}"))
            .ok()
    })
    .as_ref()
}

/// Scans one job's rules. The job lends its context what it carries and always takes it back:
/// a panic in the rules is caught inside (the shard's `run` then scans the message itself).
fn scan_alone(snap: &Snapshot, job: &mut Job) {
    let (mut ctx, carried) = job.lend();
    snap.chain.scan_rules(&mut [&mut ctx]);
    carried.swap(&mut ctx);
}

/// Scans a batch, messages of the same snapshot together, and hands out the outcomes.
fn scan(mut batch: Vec<Queued>) {
    while !batch.is_empty() {
        let snap = Arc::clone(&batch[0].snap);
        let (mut same, rest): (Vec<Queued>, Vec<Queued>) =
            batch.into_iter().partition(|q| Arc::ptr_eq(&q.snap, &snap));
        batch = rest;
        // A message alone is left to `run`, which scans it as it scans any lone message.
        if same.len() > 1 {
            // Each job lends its context what it carries, and takes it back with the outcome.
            let (mut ctxs, mut carried): (Vec<Context<'_>>, Vec<&mut Carried>) =
                same.iter_mut().map(|q| q.job.lend()).unzip();
            snap.chain
                .scan_rules(&mut ctxs.iter_mut().collect::<Vec<_>>());
            for (c, ctx) in carried.iter_mut().zip(&mut ctxs) {
                c.swap(ctx);
            }
        }
        for q in same {
            *q.slot.job.borrow_mut() = Some(q.job);
            if let Some(w) = q.slot.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// Clears the leader's mark when it finishes or goes away, waking the waiting sessions so one
/// of them leads what is left.
struct Leading<'a>(&'a RulesBatcher);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.leading.set(false);
        self.0.leader.borrow_mut().take();
        for q in self.0.queue.borrow().iter() {
            if let Some(w) = q.slot.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// Ready when the queue holds other than `seen` messages.
struct Grew<'a> {
    batcher: &'a RulesBatcher,
    seen: usize,
}

impl Future for Grew<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.batcher.queue.borrow().len() != self.seen {
            return Poll::Ready(());
        }
        *self.batcher.leader.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Ready when the slot is filled or nobody leads.
struct Wait<'a> {
    slot: &'a Slot,
    leading: &'a Cell<bool>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.slot.job.borrow().is_some() || !self.leading.get() {
            return Poll::Ready(());
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
