//! A connection that is plain TCP or TLS, behind one `AsyncRead + AsyncWrite` type, plus the
//! read-into-`BytesMut` helper both SMTP sides use.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::rt::{self, TcpStream};

/// A TCP stream, possibly upgraded to TLS by STARTTLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// We are the TLS server (STARTTLS from a client).
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    /// We are the TLS client (STARTTLS to the next hop).
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// Transient state during an upgrade.
    Gone,
}

impl Conn {
    /// The raw socket descriptor (for shutdown on drain).
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Conn::Plain(s) => Some(s.as_raw_fd()),
            Conn::Server(s) => Some(s.get_ref().0.as_raw_fd()),
            Conn::Client(s) => Some(s.get_ref().0.as_raw_fd()),
            Conn::Gone => None,
        }
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Server(_) | Conn::Client(_))
    }

    /// Takes the plain stream out for an upgrade.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Conn::Gone) {
            Conn::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Reads once into the spare capacity of `buf` (at least `min_room` bytes of it), with a
    /// deadline. `Ok(0)` is end of stream.
    pub async fn read_buf(
        &mut self,
        buf: &mut BytesMut,
        min_room: usize,
        deadline: Duration,
    ) -> io::Result<usize> {
        let room = min_room.max(1024);
        if buf.capacity() - buf.len() < room {
            buf.reserve(room);
        }
        let len = buf.len();
        let cap = buf.capacity();
        // Zero the spare capacity once per read; the read then fills it.
        buf.resize(cap, 0);
        let res = rt::timeout(
            deadline,
            futures_lite::AsyncReadExt::read(self, &mut buf[len..]),
        )
        .await;
        let n = match res {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                buf.truncate(len);
                return Err(e);
            }
            None => {
                buf.truncate(len);
                return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
            }
        };
        buf.truncate(len + n);
        Ok(n)
    }

    /// Writes all of `data` with a deadline.
    pub async fn write_all_timeout(&mut self, data: &[u8], deadline: Duration) -> io::Result<()> {
        match rt::timeout(deadline, self.write_all(data)).await {
            Some(r) => r,
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Server(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Client(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Server(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Client(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Server(s) => Pin::new(s).poll_flush(cx),
            Conn::Client(s) => Pin::new(s).poll_flush(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Server(s) => Pin::new(s).poll_close(cx),
            Conn::Client(s) => Pin::new(s).poll_close(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}
