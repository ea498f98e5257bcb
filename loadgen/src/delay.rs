//! `mxgate-loadgen dns-delay`: a UDP relay that holds every datagram for a while in each
//! direction, so a DNS server on loopback answers as one across a network would (where the
//! kernel's netem queueing discipline is not available). Each datagram is delayed on its own
//! timer: a hundred queries in flight all arrive one delay later, as on a real link. Queries
//! go upstream on one socket with their IDs rewritten, so the relay itself costs one send and
//! one receive per datagram, like a router.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (clients send their queries here).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The DNS server to relay to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Round-trip delay added, in milliseconds (half each way).
    #[arg(long, default_value_t = 5.0)]
    delay_ms: f64,
}

/// Runs until killed; prints the listening address first.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let front = Arc::new(UdpSocket::bind(a.listen).await?);
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(a.upstream).await?;
    println!("{}", front.local_addr()?);
    let half = Duration::from_secs_f64(a.delay_ms / 2000.0);
    // Relay ID → (client, the client's ID).
    let inflight: Arc<Mutex<HashMap<u16, (SocketAddr, u16)>>> = Arc::default();
    {
        let (front, back, inflight) = (front.clone(), back.clone(), inflight.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = back.recv(&mut buf).await {
                if n < 2 {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let Some((client, orig)) = inflight.lock().unwrap().remove(&id) else {
                    continue;
                };
                let mut answer = buf[..n].to_vec();
                answer[..2].copy_from_slice(&orig.to_be_bytes());
                let front = front.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(half).await;
                    let _ = front.send_to(&answer, client).await;
                });
            }
        });
    }
    let mut buf = vec![0u8; 65_536];
    let mut next: u16 = 0;
    loop {
        let (n, client) = front.recv_from(&mut buf).await?;
        if n < 2 {
            continue;
        }
        let mut query = buf[..n].to_vec();
        let orig = u16::from_be_bytes([query[0], query[1]]);
        next = next.wrapping_add(1);
        inflight.lock().unwrap().insert(next, (client, orig));
        query[..2].copy_from_slice(&next.to_be_bytes());
        let back = back.clone();
        tokio::spawn(async move {
            tokio::time::sleep(half).await;
            let _ = back.send(&query).await;
        });
    }
}
