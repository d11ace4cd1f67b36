//! The listener keel serves from, made to stop without dropping a connection a client has
//! already made. Told to stop, it first accepts every connection the kernel has queued (a
//! client, such as a proxy, may have sent a request on each), then closes; and it counts
//! the accepted connections that have not sent anything yet, so that shutdown can let
//! their first request in before it closes idle connections (hyper would otherwise close a
//! connection whose request it has not read yet).

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::serve::Listener;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What a [`StoppableListener`] and its [`ListenerStop`] share.
struct Shared {
    /// Set once the listener is to stop.
    stop: watch::Sender<bool>,
    /// Set once the listener has closed.
    closed: watch::Sender<bool>,
    /// Accepted connections that have neither sent a byte nor closed.
    silent: watch::Sender<usize>,
}

/// A TCP listener that can be stopped through its [`ListenerStop`].
pub struct StoppableListener {
    /// `None` once closed.
    inner: Option<TcpListener>,
    /// Connections taken from the kernel's queue on closing, not yet handed out (counted
    /// as silent already, so that stopping waits for them to be served).
    queued: VecDeque<(Speaking<TcpStream>, SocketAddr)>,
    shared: Arc<Shared>,
}

/// Stops a [`StoppableListener`].
#[derive(Clone)]
pub struct ListenerStop(Arc<Shared>);

impl StoppableListener {
    /// Wraps `inner`; the returned handle stops it.
    pub fn new(inner: TcpListener) -> (Self, ListenerStop) {
        let shared = Arc::new(Shared {
            stop: watch::Sender::new(false),
            closed: watch::Sender::new(false),
            silent: watch::Sender::new(0),
        });
        let stop = ListenerStop(Arc::clone(&shared));
        let listener = Self {
            inner: Some(inner),
            queued: VecDeque::new(),
            shared,
        };
        (listener, stop)
    }
}

impl ListenerStop {
    /// Makes the listener take what the kernel has queued and close, then waits (at most
    /// `patience`) until every connection it accepted has sent its first bytes or closed.
    /// The listener must be in use (served) for this to finish.
    pub async fn stop(&self, patience: Duration) {
        self.0.stop.send_replace(true);
        let mut closed = self.0.closed.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = closed.wait_for(|closed| *closed).await;
        let mut silent = self.0.silent.subscribe();
        let spoken = tokio::time::timeout(patience, async {
            let _ = silent.wait_for(|silent| *silent == 0).await;
        })
        .await;
        if spoken.is_err() {
            tracing::debug!("connections that sent nothing are closed with the idle ones");
        }
    }
}

impl Listener for StoppableListener {
    type Io = Speaking<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut stop = self.shared.stop.subscribe();
        loop {
            if let Some(queued) = self.queued.pop_front() {
                return queued;
            }
            let stopping = *stop.borrow_and_update();
            if stopping && let Some(inner) = self.inner.take() {
                self.queued = take_queued(inner, &self.shared);
                self.shared.closed.send_replace(true);
                continue;
            }
            let Some(inner) = self.inner.as_mut() else {
                return std::future::pending().await;
            };
            tokio::select! {
                (io, addr) = Listener::accept(inner) => return (Speaking::new(io, &self.shared), addr),
                _ = stop.changed() => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.inner {
            Some(inner) => inner.local_addr(),
            None => Err(io::Error::other("the listener is closed")),
        }
    }
}

/// Accepts every connection the kernel has queued for `listener` (each may already carry a
/// request), then closes it. Done with blocking-free system calls, not through the reactor,
/// whose idea of what is queued may lag.
fn take_queued(
    listener: TcpListener,
    shared: &Arc<Shared>,
) -> VecDeque<(Speaking<TcpStream>, SocketAddr)> {
    let mut queued = VecDeque::new();
    // Still non-blocking, as tokio set it.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "cannot take the queued connections; closing without them");
            return queued;
        }
    };
    loop {
        match listener.accept() {
            Ok((stream, addr)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                match stream {
                    Ok(stream) => queued.push_back((Speaking::new(stream, shared), addr)),
                    Err(error) => tracing::warn!(%error, "cannot serve a queued connection"),
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(error) => {
                tracing::warn!(%error, "cannot take the queued connections");
                break;
            }
        }
    }
    queued
}

/// An accepted connection, counted as silent until it sends its first bytes or closes.
pub struct Speaking<Io> {
    io: Io,
    /// Present while the connection has not spoken.
    silent: Option<Arc<Shared>>,
}

impl<Io> Speaking<Io> {
    fn new(io: Io, shared: &Arc<Shared>) -> Self {
        shared.silent.send_modify(|silent| *silent += 1);
        Self {
            io,
            silent: Some(Arc::clone(shared)),
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &Io {
        &self.io
    }

    fn spoke(&mut self) {
        if let Some(shared) = self.silent.take() {
            shared.silent.send_modify(|silent| *silent -= 1);
        }
    }
}

impl<Io> Drop for Speaking<Io> {
    fn drop(&mut self) {
        self.spoke();
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Speaking<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        // Bytes, the end of the stream or an error: either way it is no longer silent.
        if poll.is_ready() {
            self.spoke();
        }
        poll
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Speaking<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_stopped_listener_hands_over_queued_connections_then_closes() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (mut listener, stop) = StoppableListener::new(tcp);
        // Queued by the kernel, not yet accepted, one with a request already sent.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let second = TcpStream::connect(addr).await.unwrap();

        let mut stopping = Box::pin(stop.stop(Duration::from_secs(30)));
        // Its first step asks the listener to stop; it waits for the listener to close.
        assert!((&mut stopping).now_or_never().is_none());
        let (mut io, _) = listener.accept().await;
        let mut request = [0; 18];
        io.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"GET / HTTP/1.1\r\n\r\n");
        // The listener has closed: new connections are refused. The stop still waits for
        // the second connection, queued but not handed out yet.
        assert!(listener.local_addr().is_err());
        assert!(TcpStream::connect(addr).await.is_err());
        assert!((&mut stopping).now_or_never().is_none());
        let (silent, _) = listener.accept().await;
        assert!(listener.accept().now_or_never().is_none());
        // Handed out, it has not spoken yet; once it closes, the stop is done.
        assert!((&mut stopping).now_or_never().is_none());
        drop(silent);
        stopping.await;
        drop(second);
    }
}
