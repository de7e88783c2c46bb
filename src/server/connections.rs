//! The connection table: one [`Connection`] per accepted socket, in a slab
//! indexed by mio token, and the socket reads and writes.

use super::tls::Tls;
use crate::app::{AppConn, ConnId};
use crate::connection::{ConnectionConfig, Handler, WebSocketClient};
use mio::Interest;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::time::Instant;

/// The operating system says "try again later": not an error, just the end of this burst.
pub(super) fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal arrived during the call: retry it.
pub(super) fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// One accepted TCP connection, the WebSocket state that goes with it, and
/// the application's state for it.
pub(super) struct Connection<C> {
    /// Who this is to the application, with the slot's index: a number
    /// unique to this connection (the index is the slot's, not kept here:
    /// 8 bytes in every slot).
    pub generation: u64,
    /// (The peer's address is not kept: 32 bytes in every slot, for the logs
    /// only. [`Connection::peer`] asks the socket.)
    pub stream: TcpStream,
    pub client: WebSocketClient,
    pub app: AppConn<C>,
    /// What the registry currently watches for this connection.
    pub interest: Interest,
    /// We have shut down our writing side (the close is sent and flushed).
    pub write_shut: bool,
    /// The peer has closed its writing side (read returned 0).
    pub peer_eof: bool,
    /// What the server counts this connection as holding of input not yet
    /// complete (its client's `buffered_bytes` when it was last serviced,
    /// saturated: 4 bytes here rather than 8, in every slot).
    pub buffered: u32,
    /// The time of this connection's live entry in the timer heap, if any.
    pub timer: Option<Instant>,
    /// Reading stopped because the outgoing queue was over its limit or the
    /// input was paused: read again as soon as that ends, whatever event
    /// reports it.
    pub read_paused: bool,
    /// On the ready list: it used up its read budget with input possibly left.
    pub in_ready: bool,
    /// Deliveries were queued for it this turn: write them at the end of the turn.
    pub dirty: bool,
    /// Counted among the handshakes in progress.
    pub handshaking: bool,
    /// The poller reported a hang-up or error: read on to EOF or the error,
    /// rather than stopping at a short read.
    pub hangup: bool,
    /// It came in on the metrics port ([`MetricsEndpoint::Bind`](super::MetricsEndpoint)).
    pub metrics_port: bool,
    /// TLS, on a server with a certificate: what is read and written goes through it.
    pub tls: Option<Box<Tls>>,
}

impl<C> Connection<C> {
    pub fn new(id: ConnId, stream: TcpStream, client: WebSocketClient, tls: Option<Box<Tls>>) -> Connection<C> {
        Connection {
            generation: id.generation,
            stream,
            client,
            app: AppConn::default(),
            interest: Interest::READABLE,
            write_shut: false,
            peer_eof: false,
            buffered: 0,
            timer: None,
            read_paused: false,
            in_ready: false,
            dirty: false,
            handshaking: true,
            hangup: false,
            metrics_port: false,
            tls,
        }
    }
}

impl<C> Connection<C> {
    /// Ciphertext waits to be written (there is TLS, and it has some).
    pub fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes the outgoing queue: to the socket, or through TLS. Returns
    /// how many bytes of the queue went (to the socket, or to TLS).
    pub fn write(&mut self) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.client.write_to(&mut Sock::of(&self.stream));
        };
        let mut total = 0;
        loop {
            let moved = self.client.write_to(&mut tls.writer())?;
            total += moved;
            tls.flush(&self.stream)?;
            // Stop when the socket is full, or nothing more could be handed
            // to TLS (its buffer is full while it still handshakes, or the
            // queue is empty).
            if tls.wants_write() || moved == 0 || !self.client.wants_write() {
                return Ok(total);
            }
        }
    }

    /// The peer's address, for a log line ("?" once the socket has lost it).
    pub fn peer(&self) -> String {
        self.stream.peer_addr().map_or_else(|_| "?".into(), |addr| addr.to_string())
    }
}

/// Connections by token: a vector of slots and a list of free ones.
pub(super) struct Slab<C> {
    slots: Vec<Option<Connection<C>>>,
    free: Vec<usize>,
    len: usize,
}

impl<C> Default for Slab<C> {
    fn default() -> Slab<C> {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<C> Slab<C> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The index the next `insert` will use.
    pub fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    pub fn insert(&mut self, conn: Connection<C>) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(conn);
                index
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut Connection<C>> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    /// The connection `id` names, if it is still open (not a later one in its slot).
    pub fn get_id(&mut self, id: ConnId) -> Option<&mut Connection<C>> {
        self.get_mut(id.index).filter(|conn| conn.generation == id.generation)
    }

    pub fn remove(&mut self, index: usize) -> Option<Connection<C>> {
        let conn = self.slots.get_mut(index).and_then(Option::take)?;
        self.free.push(index);
        self.len -= 1;
        Some(conn)
    }

    pub fn indices(&self) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, slot)| slot.is_some()).map(|(i, _)| i).collect()
    }
}

/// What [`read_into`] found.
pub(super) struct ReadOutcome {
    /// The peer closed its side (read returned 0).
    pub eof: bool,
    /// Reading stopped (or must stop now) because the outgoing queue is over
    /// its cap or the input is paused.
    pub paused: bool,
    /// The bytes handed to the client (after TLS).
    pub bytes: usize,
}

/// Reads until the socket is drained, feeding every byte to the client,
/// unless the client's outgoing queue is full or its input is paused (then
/// `paused`) or the read budget runs out. A client that comes to hold more
/// than `allowance` bytes of input in progress is failed with 1013.
///
/// A read that fills less than the buffer has drained the socket: on Linux,
/// epoll reports every later arrival as a new edge, so the extra read that
/// would only say `WouldBlock` is skipped (a third of the system calls of a
/// busy echo). The exception is a hang-up already reported: then the FIN came
/// with that same edge and we read on until EOF.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_into<H: Handler>(
    stream: &TcpStream,
    client: &mut WebSocketClient,
    hangup: bool,
    read_buf: &mut [u8],
    config: &ConnectionConfig,
    handler: &mut H,
    now: Instant,
    budget: &mut usize,
    allowance: usize,
) -> io::Result<ReadOutcome> {
    // Stopped for a full queue or a pause: resume when that ends, whatever
    // event reports it (no new READABLE edge comes for data already waiting).
    let mut bytes = 0;
    let stopped =
        |client: &WebSocketClient, bytes| ReadOutcome { eof: false, paused: !client.wants_read(config), bytes };
    loop {
        if !client.wants_read(config) || *budget == 0 {
            return Ok(stopped(client, bytes));
        }
        *budget -= 1;
        match Sock::of(stream).read(read_buf) {
            Ok(0) => {
                client.handle_eof(now, config);
                return Ok(ReadOutcome { eof: true, paused: false, bytes });
            }
            Ok(n) => {
                let Some(input) = read_buf.get_mut(..n) else { return Ok(stopped(client, bytes)) };
                bytes += n;
                feed(client, input, now, config, handler, allowance);
                if n < read_buf.len() && !hangup {
                    return Ok(stopped(client, bytes));
                }
            }
            Err(err) if would_block(&err) => return Ok(stopped(client, bytes)),
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Hands one read's bytes (from the socket, or decrypted) to the client; a
/// client that comes to hold more than `allowance` of input in progress is failed with 1013.
#[inline(always)]
fn feed<H: Handler>(
    client: &mut WebSocketClient,
    input: &mut [u8],
    now: Instant,
    config: &ConnectionConfig,
    handler: &mut H,
    allowance: usize,
) {
    client.handle_input(input, now, config, handler);
    if client.buffered_bytes() > allowance {
        client.fail_server_busy(now, config);
    }
}

/// [`read_into`] for a TLS connection: the plaintext rustls has already
/// decrypted first, then more ciphertext from the socket, until the socket
/// is drained, the client stops wanting input, or the budget runs out.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_tls_into<H: Handler>(
    tls: &mut Tls,
    stream: &TcpStream,
    client: &mut WebSocketClient,
    read_buf: &mut [u8],
    config: &ConnectionConfig,
    handler: &mut H,
    now: Instant,
    budget: &mut usize,
    allowance: usize,
) -> io::Result<ReadOutcome> {
    let mut bytes = 0;
    let stopped =
        |client: &WebSocketClient, bytes| ReadOutcome { eof: false, paused: !client.wants_read(config), bytes };
    let eof = |client: &mut WebSocketClient, bytes| {
        client.handle_eof(now, config);
        ReadOutcome { eof: true, paused: false, bytes }
    };
    loop {
        loop {
            if !client.wants_read(config) {
                return Ok(stopped(client, bytes));
            }
            match tls.plaintext(read_buf)? {
                None => break,
                Some(0) => return Ok(eof(client, bytes)),
                Some(n) => {
                    let Some(input) = read_buf.get_mut(..n) else { return Ok(stopped(client, bytes)) };
                    bytes += n;
                    feed(client, input, now, config, handler, allowance);
                }
            }
        }
        if *budget == 0 {
            return Ok(stopped(client, bytes));
        }
        *budget -= 1;
        match tls.read_from(stream) {
            Ok(0) => return Ok(eof(client, bytes)),
            Ok(_) => {}
            Err(err) if would_block(&err) => return Ok(stopped(client, bytes)),
            Err(err) => return Err(err),
        }
    }
}

/// A connected socket, read with `recv` and written with `send`/`sendmsg`
/// rather than `read`/`write`/`writev`: the same bytes, without the
/// file-system layer's work on every call (see BENCHMARKS.md).
pub(super) struct Sock<'a>(socket2::SockRef<'a>);

impl<'a> Sock<'a> {
    pub fn of(stream: &'a TcpStream) -> Sock<'a> {
        Sock(socket2::SockRef::from(stream))
    }
}

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match bufs {
            [one] => self.0.send(one),
            _ => self.0.send_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
