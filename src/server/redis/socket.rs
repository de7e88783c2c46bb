//! One of the link's two connections: its socket and RESP state, what its
//! replies answer, and its I/O for a turn (connect, write, read).

use crate::broker::resp::{Event, Resp};
use mio::net::TcpStream;
use std::io::{self, Read, Write};

/// One of the two connections.
pub(super) struct Socket<U> {
    pub(super) stream: TcpStream,
    pub(super) resp: Resp<U>,
    pub(super) connected: bool,
}

/// What the command connection's replies answer.
pub(super) enum Tag<T> {
    Caller(T),
    /// The `SELECT` sent on connecting.
    Select,
    /// A command of [`LinkConfig::preload`].
    Preload,
}

/// What the subscriber connection's replies answer.
pub(super) enum SubTag {
    Subscribe(Vec<u8>),
    Unsubscribe,
}

/// A turn's I/O failed: the link goes down.
pub(super) struct Broken(pub(super) String);

/// Queues the preload commands (their replies are dropped).
pub(super) fn preload<T>(commands: &mut Socket<Tag<T>>, preload: &[Vec<Vec<u8>>]) {
    for command in preload {
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        commands.resp.command(Tag::Preload, &args);
    }
}

pub(super) fn subscribe(subscriber: &mut Socket<SubTag>, channel: Vec<u8>) {
    subscriber.resp.command(SubTag::Subscribe(channel.clone()), &[b"SUBSCRIBE", &channel]);
}

/// One connection's I/O: finishes connecting, writes what is queued, reads
/// until the socket has no more or `room` events have come. Returns whether
/// the socket was drained.
pub(super) fn pump<U>(
    socket: &mut Socket<U>,
    buf: &mut [u8],
    room: usize,
    events: &mut Vec<Event<U>>,
) -> Result<bool, Broken> {
    if !socket.connected {
        if let Ok(Some(err)) | Err(err) = socket.stream.take_error() {
            return Err(Broken(err.to_string()));
        }
        match socket.stream.peer_addr() {
            Ok(_) => {
                socket.connected = true;
                let _ = socket.stream.set_nodelay(true);
            }
            Err(err) if err.kind() == io::ErrorKind::NotConnected => return Ok(true),
            Err(err) => return Err(Broken(err.to_string())),
        }
    }
    while !socket.resp.output().is_empty() {
        match socket.stream.write(socket.resp.output()) {
            Ok(0) => return Err(Broken("redis closed the connection".into())),
            Ok(n) => socket.resp.written(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Broken(err.to_string())),
        }
    }
    loop {
        if events.len() >= room {
            return Ok(false);
        }
        match socket.stream.read(buf) {
            Ok(0) => return Err(Broken("redis closed the connection".into())),
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default();
                socket.resp.feed(bytes, events).map_err(|err| Broken(err.to_string()))?;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Broken(err.to_string())),
        }
    }
}
