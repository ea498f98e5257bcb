//! `mxgate-loadgen dns-delay`: a UDP relay that holds every datagram for a while in each
//! direction, so a DNS server on loopback answers as one across a network would (where the
//! kernel's netem queueing discipline is not available). Each datagram is held for exactly the
//! delay from the moment it arrived: a hundred queries in flight all arrive one delay later, as on
//! a real link. Queries go upstream on one socket with their IDs rewritten.
//!
//! Timing: one thread per socket receives (as many datagrams per system call as are waiting)
//! and stamps each with its due time; one thread sends them when due, sleeping on the kernel's
//! high-resolution timers (timer slack 1 ns), everything due at once in one system call per
//! socket. An async runtime's millisecond timer wheel would round each hold up to the next tick
//! and let datagrams that arrived within the same millisecond leave a tick apart; and the relay
//! shares the machine's cores with what it measures, so its cost per datagram is kept small.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Where a held datagram goes: upstream (`None`) or to a client.
type Held = (Instant, Vec<u8>, Option<SocketAddr>);

/// Datagrams read per system call at most.
const BATCH: usize = 64;

/// Runs until killed; prints the listening address first.
pub fn run(a: Args) -> anyhow::Result<()> {
    let front = Arc::new(UdpSocket::bind(a.listen)?);
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
    back.connect(a.upstream)?;
    println!("{}", front.local_addr()?);
    let half = Duration::from_secs_f64(a.delay_ms / 2000.0);
    // Relay ID → (client, the client's ID).
    let inflight: Arc<Mutex<HashMap<u16, (SocketAddr, u16)>>> = Arc::default();
    // Both directions hold for the same time, so one queue in arrival order is in due order.
    let (tx, rx) = mpsc::channel::<Vec<Held>>();
    {
        let (back, inflight, tx) = (back.clone(), inflight.clone(), tx.clone());
        std::thread::Builder::new()
            .name("answers".into())
            .spawn(move || {
                receive(
                    back.as_raw_fd(),
                    |due, mut answer, _| {
                        let id = u16::from_be_bytes([answer[0], answer[1]]);
                        let (client, orig) = inflight.lock().unwrap().remove(&id)?;
                        answer[..2].copy_from_slice(&orig.to_be_bytes());
                        Some((due + half, answer, Some(client)))
                    },
                    &tx,
                )
            })?;
    }
    {
        let front = front.clone();
        std::thread::Builder::new()
            .name("queries".into())
            .spawn(move || {
                let mut next: u16 = 0;
                receive(
                    front.as_raw_fd(),
                    |due, mut query, client| {
                        let orig = u16::from_be_bytes([query[0], query[1]]);
                        next = next.wrapping_add(1);
                        inflight.lock().unwrap().insert(next, (client?, orig));
                        query[..2].copy_from_slice(&next.to_be_bytes());
                        Some((due + half, query, None))
                    },
                    &tx,
                )
            })?;
    }
    // SAFETY: prctl on the calling thread with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut held: VecDeque<Held> = VecDeque::new();
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(batch) => held.extend(batch),
                Err(_) => return Ok(()),
            }
        }
        let due = held[0].0;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        while let Ok(batch) = rx.try_recv() {
            held.extend(batch);
        }
        // Everything due by now (and within a few microseconds) leaves together.
        let cut = Instant::now() + Duration::from_micros(20);
        let n = held.iter().take_while(|(due, _, _)| *due <= cut).count();
        let batch: Vec<Held> = held.drain(..n.max(1)).collect();
        let up: Vec<&[u8]> = batch
            .iter()
            .filter(|(_, _, to)| to.is_none())
            .map(|(_, b, _)| b.as_slice())
            .collect();
        // What a full buffer refuses is dropped, as a link drops.
        mxgate_core::udp::send_many(back.as_raw_fd(), &up, &[], 0);
        let (down, to): (Vec<&[u8]>, Vec<SocketAddr>) = batch
            .iter()
            .filter_map(|(_, b, to)| to.map(|c| (b.as_slice(), c)))
            .unzip();
        mxgate_core::udp::send_many(front.as_raw_fd(), &down, &to, 0);
    }
}

/// Receives on `fd` until it fails, as many datagrams per `recvmmsg(2)` as are waiting (at
/// least one); `hold` turns each (arrival time, bytes, sender) into what to send later.
fn receive(
    fd: RawFd,
    mut hold: impl FnMut(Instant, Vec<u8>, Option<SocketAddr>) -> Option<Held>,
    tx: &mpsc::Sender<Vec<Held>>,
) {
    let mut bufs = vec![[0u8; 4096]; BATCH];
    // SAFETY: all-zero sockaddr_storage values are valid.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(v, n)| {
                // SAFETY: an all-zero msghdr is valid.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = v;
                h.msg_iovlen = 1;
                h.msg_name = n as *mut libc::sockaddr_storage as *mut libc::c_void;
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: `msgs` points into `iov` (into `bufs`) and `names`, alive for the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let now = Instant::now();
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut out = Vec::with_capacity(r as usize);
        for (i, m) in msgs.iter().take(r as usize).enumerate() {
            let n = m.msg_len as usize;
            if n < 2 {
                continue;
            }
            // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into names[i].
            let from = unsafe {
                socket2::SockAddr::new(
                    std::ptr::read(&names[i]),
                    m.msg_hdr.msg_namelen as libc::socklen_t,
                )
            }
            .as_socket();
            if let Some(h) = hold(now, bufs[i][..n].to_vec(), from) {
                out.push(h);
            }
        }
        if !out.is_empty() && tx.send(out).is_err() {
            return;
        }
    }
}
