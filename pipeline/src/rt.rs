//! The runtime seam: everything the pipeline needs from glommio, in one place, so the rest of
//! the crate does not name the runtime and it could be swapped.

use std::future::Future;
use std::time::Duration;

pub use glommio::net::{TcpListener, TcpStream};

/// Starts one executor thread (a shard) running `main`, pinned to `cpu` when given.
pub fn start_shard<G, F>(
    name: &str,
    cpu: Option<usize>,
    io_memory: usize,
    main: G,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let placement = match cpu {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    // io_memory must stay inside RLIMIT_MEMLOCK (8 MiB here) summed over shards (the tuning plan
    // sees to it); sockets do not use the registered buffers, so a small area is enough.
    glommio::LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(io_memory)
        .preempt_timer(Duration::from_millis(10))
        .spawn(main)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Runs `fut` as a detached task on the current shard.
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    glommio::spawn_local(fut).detach();
}

/// Sleeps on the current shard.
pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await
}

/// Runs `fut` with a deadline; `None` when it expired.
pub async fn timeout<T, F: Future<Output = T>>(d: Duration, fut: F) -> Option<T> {
    glommio::timer::timeout(d, async { Ok(fut.await) })
        .await
        .ok()
}

/// Connects with a deadline.
pub async fn connect(addr: std::net::SocketAddr, d: Duration) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(addr, d)
        .await
        .map_err(std::io::Error::from)
}

/// Gives other tasks of the shard a turn when this one has run long.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await
}

#[cfg(test)]
mod tests {
    //! The runtime's timers and preemption, which `vendor/glommio` changes (PATCHES.md): a
    //! latency timer is kept across waits while it is due no later than needed, so these check
    //! that sooner deadlines still fire on time and that a busy task is still preempted.

    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// Runs `main` on a fresh shard and returns what it sends back.
    fn on_shard<T, F>(main: impl FnOnce(mpsc::Sender<T>) -> F + Send + 'static) -> Vec<T>
    where
        T: Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        start_shard("rt-test", None, 1 << 20, move || main(tx))
            .expect("shard starts")
            .join()
            .expect("shard ends");
        rx.try_iter().collect()
    }

    /// Spins for `d`, offering to yield as the gateway's content stages do.
    async fn busy(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::black_box((0..1000u64).sum::<u64>());
            yield_if_needed().await;
        }
    }

    /// A future completed by another thread after `d` (no timer of the shard involved).
    fn woken_from_another_thread(d: Duration) -> impl Future<Output = ()> {
        use std::sync::{Arc, Mutex};
        use std::task::{Poll, Waker};
        let state: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
        let other = state.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let mut s = other.lock().unwrap();
            s.0 = true;
            if let Some(w) = s.1.take() {
                w.wake();
            }
        });
        std::future::poll_fn(move |cx| {
            let mut s = state.lock().unwrap();
            if s.0 {
                Poll::Ready(())
            } else {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    #[test]
    fn sooner_deadlines_fire_on_time_after_busy_and_long_timers() {
        let took = on_shard(|tx| async move {
            // Busy first, so preemption timers are armed and kept.
            busy(Duration::from_millis(30)).await;
            let t = Instant::now();
            let r = timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
            assert!(r.is_none());
            tx.send(("timeout 5 ms", t.elapsed())).unwrap();
            // The shard sleeps with only a far timer armed and is woken from another thread;
            // then a sooner deadline must replace the far one.
            spawn(async { sleep(Duration::from_secs(2)).await });
            woken_from_another_thread(Duration::from_millis(30)).await;
            let t = Instant::now();
            sleep(Duration::from_millis(20)).await;
            tx.send(("sleep 20 ms", t.elapsed())).unwrap();
        });
        assert_eq!(took.len(), 2);
        let (_, t5) = took[0];
        assert!(
            t5 >= Duration::from_millis(5) && t5 < Duration::from_millis(150),
            "{t5:?}"
        );
        let (_, t20) = took[1];
        assert!(
            t20 >= Duration::from_millis(20) && t20 < Duration::from_millis(150),
            "{t20:?}"
        );
    }

    #[test]
    fn a_busy_task_is_preempted_for_a_due_timer() {
        let got = on_shard(|tx| async move {
            let start = Instant::now();
            let woke = tx.clone();
            spawn(async move {
                sleep(Duration::from_millis(5)).await;
                woke.send(("timer task ran", start.elapsed())).unwrap();
            });
            busy(Duration::from_millis(400)).await;
            tx.send(("busy task done", start.elapsed())).unwrap();
        });
        assert_eq!(got[0].0, "timer task ran", "{got:?}");
        // Due at 5 ms; the 10 ms preemption timer (seen up to a scheduler tick late) lets it
        // run long before the busy task's 400 ms are over.
        assert!(got[0].1 < Duration::from_millis(150), "{got:?}");
    }
}
