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
