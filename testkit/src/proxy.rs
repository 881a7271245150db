//! A TCP proxy a test puts between a client and a server (PostgreSQL, typically) to make the
//! network misbehave on purpose.
//!
//! [`TcpProxy::black_hole`] freezes every connection open at that moment: nothing is forwarded in
//! either direction any more and nothing is closed, so each side waits for an answer that never
//! comes — what a client sees when a firewall or a failed host silently drops a connection.
//! Connections made afterwards pass normally. [`TcpProxy::refuse_new`] closes every new
//! connection at once (a server that is down) until it is turned off. Everything, frozen
//! connections included, is closed when the proxy is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A proxy listening on a free port of 127.0.0.1, forwarding to `upstream`.
#[derive(Debug)]
pub struct TcpProxy {
    local: SocketAddr,
    /// One token per connection forwarded so far; cancelling it freezes the connection.
    connections: Arc<Mutex<Vec<CancellationToken>>>,
    /// New connections are closed at once while set.
    refusing: Arc<AtomicBool>,
    /// Ends the accept loop and every connection, frozen ones included.
    closed: CancellationToken,
}

impl TcpProxy {
    /// Starts forwarding connections made to [`TcpProxy::port`] to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let connections = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let closed = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            connections.clone(),
            refusing.clone(),
            closed.clone(),
        ));
        Ok(Self {
            local,
            connections,
            refusing,
            closed,
        })
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// While `refuse` is true, every new connection is closed as soon as it is accepted.
    pub fn refuse_new(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Freezes every connection open now; returns how many.
    pub fn black_hole(&self) -> usize {
        let Ok(mut connections) = self.connections.lock() else {
            return 0;
        };
        connections.retain(|c| !c.is_cancelled());
        for connection in connections.iter() {
            connection.cancel();
        }
        let frozen = connections.len();
        connections.clear();
        frozen
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    connections: Arc<Mutex<Vec<CancellationToken>>>,
    refusing: Arc<AtomicBool>,
    closed: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = closed.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        if refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let frozen = CancellationToken::new();
        if let Ok(mut list) = connections.lock() {
            list.push(frozen.clone());
        }
        tokio::spawn(forward(client, upstream, frozen, closed.clone()));
    }
}

/// Copies bytes both ways until either side closes, or freezes when `frozen` is cancelled and
/// then holds both sockets open until the proxy closes.
async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    frozen: CancellationToken,
    closed: CancellationToken,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pass = async {
        tokio::select! {
            _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
            _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
        }
    };
    let froze = tokio::select! {
        () = closed.cancelled() => false,
        () = frozen.cancelled() => true,
        () = pass => false,
    };
    if froze {
        // The halves stay alive (owned here) and unread until the proxy closes.
        closed.cancelled().await;
    }
    drop((client_read, client_write, server_read, server_write));
}
