//! Batched UDP sends: many datagrams in one `sendmmsg(2)` call, for a burst of DNS queries
//! (the list client) or a link delivering what is due at once (the test relay).

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Sends `datagrams` on `fd` with as few `sendmmsg` calls as the kernel takes them in: to
/// `to[i]` each, or with `to` empty on a connected socket. `flags` as for `sendmmsg`
/// (`MSG_DONTWAIT` on a blocking socket that must not wait). Returns how many were sent: the
/// first error or a full buffer stops the batch.
pub fn send_many(fd: RawFd, datagrams: &[&[u8]], to: &[SocketAddr], flags: libc::c_int) -> usize {
    if datagrams.is_empty() {
        return 0;
    }
    let names: Vec<socket2::SockAddr> = to.iter().map(|a| (*a).into()).collect();
    let mut iov: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .enumerate()
        .map(|(i, v)| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_iov = v;
            h.msg_iovlen = 1;
            if let Some(n) = names.get(i) {
                h.msg_name = n.as_ptr() as *mut libc::c_void;
                h.msg_namelen = n.len();
            }
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    let mut sent = 0;
    while sent < msgs.len() {
        // SAFETY: `msgs` points into `iov`, `names` and `datagrams`, all alive for the call.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                msgs[sent..].as_mut_ptr(),
                (msgs.len() - sent) as libc::c_uint,
                flags,
            )
        };
        if r <= 0 {
            break;
        }
        sent += r as usize;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_burst_arrives_whole_and_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let data: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + i as usize]).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let to = vec![rx.local_addr().unwrap(); refs.len()];
        assert_eq!(send_many(tx.as_raw_fd(), &refs, &to, 0), 50);
        let mut buf = [0u8; 64];
        for d in &data {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], d.as_slice());
        }
        // A connected socket takes no addresses.
        tx.connect(rx.local_addr().unwrap()).unwrap();
        assert_eq!(send_many(tx.as_raw_fd(), &refs[..3], &[], 0), 3);
        assert_eq!(send_many(tx.as_raw_fd(), &[], &[], 0), 0);
    }
}
