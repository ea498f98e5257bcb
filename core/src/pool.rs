//! A fixed pool of worker threads behind a bounded queue, and the [`Ticket`] a caller waits on.
//!
//! The gateway's shards must never block, yet libclamav and Tesseract are blocking C libraries
//! that take milliseconds per call. So each runs on a pool of plain threads: the shard
//! [`submits`](Pool::submit) a job and gets a [`Ticket`], a future that resolves when a worker
//! has finished the job. A ticket can also be waited on synchronously ([`Ticket::wait`]), so
//! the same pool serves a plain threaded program with no async runtime at all.
//!
//! The queue is bounded on purpose: when every worker is busy and the queue is full,
//! [`Pool::submit`] fails at once with [`Saturated`], and the caller answers its client with a
//! temporary failure instead of letting work pile up without bound.
//!
//! Each worker owns a state built once on its own thread (`init`), for engines that must not be
//! shared between threads (one Tesseract instance per worker).
//!
//! This is the one piece of `mxgate-core` that spawns threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The pool's queue is full: every worker is busy and `queue` jobs wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker pool saturated")]
pub struct Saturated;

/// Why a ticket yields no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Abandoned {
    /// The worker panicked on this job (the pool lives on).
    #[error("the worker failed on this job")]
    Failed,
    /// [`Ticket::wait_timeout`] gave up waiting.
    #[error("timed out waiting for the worker")]
    TimedOut,
}

struct Slot<R> {
    state: Mutex<SlotState<R>>,
    ready: Condvar,
}

struct SlotState<R> {
    result: Option<R>,
    /// The worker is done with the job (with or without a result).
    done: bool,
    waker: Option<Waker>,
}

/// The result of one job, to come. A [`Future`] (woken from the worker's thread, which any
/// executor with thread-safe wakers supports, glommio included) and a blocking handle.
pub struct Ticket<R> {
    slot: Arc<Slot<R>>,
}

/// The worker's side of a ticket. Dropped without [`Completer::complete`] (a panic), the
/// ticket yields [`Abandoned::Failed`].
pub struct Completer<R> {
    slot: Option<Arc<Slot<R>>>,
}

/// A ticket and its completer.
pub fn ticket<R>() -> (Ticket<R>, Completer<R>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            result: None,
            done: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Ticket {
            slot: Arc::clone(&slot),
        },
        Completer { slot: Some(slot) },
    )
}

impl<R> Completer<R> {
    /// Hands the result to the ticket and wakes whoever waits on it.
    pub fn complete(mut self, result: R) {
        if let Some(slot) = self.slot.take() {
            finish(&slot, Some(result));
        }
    }
}

impl<R> Drop for Completer<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            finish(&slot, None);
        }
    }
}

fn finish<R>(slot: &Slot<R>, result: Option<R>) {
    let waker = {
        let mut s = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        s.result = result;
        s.done = true;
        s.waker.take()
    };
    slot.ready.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

impl<R> Ticket<R> {
    /// Blocks until the worker is done.
    pub fn wait(self) -> Result<R, Abandoned> {
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.done {
            s = self.slot.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.result.take().ok_or(Abandoned::Failed)
    }

    /// Blocks until the worker is done or `limit` has passed. The job itself is not
    /// cancelled: a worker always finishes what it started.
    pub fn wait_timeout(self, limit: Duration) -> Result<R, Abandoned> {
        let deadline = Instant::now() + limit;
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.done {
            let now = Instant::now();
            if now >= deadline {
                return Err(Abandoned::TimedOut);
            }
            s = self
                .slot
                .ready
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.result.take().ok_or(Abandoned::Failed)
    }
}

impl<R> Future for Ticket<R> {
    type Output = Result<R, Abandoned>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.done {
            return Poll::Ready(s.result.take().ok_or(Abandoned::Failed));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

type Job<J, R> = (J, Completer<R>);

/// A fixed set of worker threads taking jobs from one bounded queue.
pub struct Pool<J: Send + 'static, R: Send + 'static> {
    tx: Option<crossbeam_channel::Sender<Job<J, R>>>,
    workers: usize,
}

impl<J: Send + 'static, R: Send + 'static> Pool<J, R> {
    /// Starts `workers` threads named `name-N` (at least one). Each builds its state with
    /// `init(N)` on its own thread, then runs `work(&mut state, job)` for each job taken. At most
    /// `queue` jobs wait beyond those being worked on. Returns once every worker has built its
    /// state and waits for jobs, so the pool takes work from its first moment.
    pub fn new<S, I, W>(
        name: &str,
        workers: usize,
        queue: usize,
        init: I,
        work: W,
    ) -> std::io::Result<Pool<J, R>>
    where
        I: Fn(usize) -> S + Send + Sync + 'static,
        W: Fn(&mut S, J) -> R + Send + Sync + 'static,
    {
        let workers = workers.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job<J, R>>(queue);
        let init = Arc::new(init);
        let work = Arc::new(work);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        for n in 0..workers {
            let rx = rx.clone();
            let init = Arc::clone(&init);
            let work = Arc::clone(&work);
            let ready = ready_tx.clone();
            // Detached: the threads end when the queue is closed and drained.
            drop(
                std::thread::Builder::new()
                    .name(format!("{name}-{n}"))
                    .spawn(move || {
                        let mut state = init(n);
                        let _ = ready.send(());
                        drop(ready);
                        for (job, done) in rx.iter() {
                            // A panic in one job fails that job (its ticket says so); the worker
                            // and its state go on with the next.
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                work(&mut state, job)
                            }));
                            if let Ok(r) = r {
                                done.complete(r);
                            }
                        }
                    })?,
            );
        }
        drop(ready_tx);
        // Every worker reports once (a worker whose init panicked closes its sender instead).
        for _ in 0..workers {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        Ok(Pool {
            tx: Some(tx),
            workers,
        })
    }

    /// Queues a job, or fails at once when the queue is full.
    pub fn submit(&self, job: J) -> Result<Ticket<R>, Saturated> {
        let (t, c) = ticket();
        let tx = self.tx.as_ref().ok_or(Saturated)?;
        tx.try_send((job, c)).map_err(|_| Saturated)?;
        Ok(t)
    }

    /// Queues a job, or gives it back at once when the queue is full (for a caller that then
    /// does the work itself).
    pub fn try_submit(&self, job: J) -> Result<Ticket<R>, J> {
        let (t, c) = ticket();
        let Some(tx) = self.tx.as_ref() else {
            return Err(job);
        };
        match tx.try_send((job, c)) {
            Ok(()) => Ok(t),
            Err(e) => Err(e.into_inner().0),
        }
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.len())
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl<J: Send + 'static, R: Send + 'static> Drop for Pool<J, R> {
    /// Closes the queue; the workers finish what was queued and exit on their own. Nothing
    /// waits for them here, so dropping a pool never blocks the dropping thread (a shard
    /// releasing an old configuration snapshot).
    fn drop(&mut self) {
        self.tx.take();
    }
}

/// Pins the calling thread to `cpus` (all of them together); `false` when the kernel refused
/// (a CPU outside the process's set) or `cpus` is empty.
pub fn pin_current_thread(cpus: &[usize]) -> bool {
    if cpus.is_empty() {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it for ids below
    // CPU_SETSIZE (checked), and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn jobs_run_on_workers_with_their_own_state() {
        let pool = Pool::new("t", 3, 16, |n| n * 100, |s: &mut usize, j: usize| *s + j).unwrap();
        let tickets: Vec<_> = (0..10).map(|j| pool.submit(j).unwrap()).collect();
        let mut got: Vec<usize> = tickets
            .into_iter()
            .map(|t| t.wait().unwrap() % 100)
            .collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_is_refused_at_once() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = Arc::clone(&gate);
        let pool = Pool::new(
            "t",
            1,
            1,
            move |_| Arc::clone(&g),
            |g: &mut Arc<(Mutex<bool>, Condvar)>, j: u32| {
                let mut open = g.0.lock().unwrap();
                while !*open {
                    open = g.1.wait(open).unwrap();
                }
                j
            },
        )
        .unwrap();
        let first = pool.submit(1).unwrap();
        // The worker may not have taken the first job yet: fill until refused.
        let mut queued = vec![];
        let mut refused = false;
        for j in 2..10 {
            match pool.submit(j) {
                Ok(t) => queued.push(t),
                Err(Saturated) => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused);
        assert!(queued.len() <= 2);
        // `try_submit` hands the refused job back whole.
        assert_eq!(pool.try_submit(77).err(), Some(77));
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert_eq!(first.wait(), Ok(1));
        for t in queued {
            assert!(t.wait().is_ok());
        }
    }

    #[test]
    fn a_panicking_job_fails_its_ticket_only() {
        let pool = Pool::new(
            "t",
            1,
            4,
            |_| (),
            |_: &mut (), j: u32| {
                assert_ne!(j, 0, "job zero panics");
                j
            },
        )
        .unwrap();
        assert_eq!(pool.submit(0).unwrap().wait(), Err(Abandoned::Failed));
        assert_eq!(pool.submit(7).unwrap().wait(), Ok(7));
    }

    #[test]
    fn wait_timeout_gives_up_and_the_future_wakes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let pool = Pool::new(
            "t",
            1,
            4,
            move |_| Arc::clone(&c),
            |c: &mut Arc<AtomicUsize>, ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                c.fetch_add(1, Ordering::SeqCst)
            },
        )
        .unwrap();
        let slow = pool.submit(300).unwrap();
        assert_eq!(
            slow.wait_timeout(Duration::from_millis(20)),
            Err(Abandoned::TimedOut)
        );
        // A future polled by a minimal executor: woken from the worker thread.
        let t = pool.submit(1).unwrap();
        let r = block_on(t);
        assert!(r.is_ok());
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
