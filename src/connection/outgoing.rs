//! The outgoing queue: encoded bytes waiting for the socket [Part 2 §19].
//!
//! The blog kept a `Vec<WebSocketFrame>`, wrote each frame, ignored how many
//! bytes the write took, and cleared the queue. On a non-blocking socket a
//! write can take part of a frame, or nothing, and the rest must wait for the
//! next WRITABLE event. So this queue holds *encoded bytes*, remembers how far
//! the first chunk has been written, and advances by exactly what each write
//! took. Small frames are packed into one chunk (one syscall for many
//! replies); several chunks go out in one vectored write.
//!
//! A frame broadcast to a room is encoded once into a [`SharedFrame`]; every
//! recipient's queue holds a reference to the same bytes, not a copy.

use crate::protocol::frame::{FrameHeader, OpCode};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// An encoded frame shared by every queue it is sent to.
pub type SharedFrame = Arc<[u8]>;

/// A run of queued bytes: this connection's own, or a frame shared with others.
#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(SharedFrame),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(bytes) => bytes,
            Chunk::Shared(bytes) => bytes,
        }
    }
}

/// Frames are appended to the last chunk while it stays under this size.
const COALESCE_LIMIT: usize = 64 * 1024;
/// The most chunks handed to one `write_vectored` call.
const MAX_IOVECS: usize = 64;

/// A queue of encoded bytes, written in order with partial-write handling.
#[derive(Debug, Default)]
pub struct Outgoing {
    chunks: VecDeque<Chunk>,
    /// How many bytes of `chunks[0]` have already been written.
    head_written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Bytes written over the connection's life.
    written_total: u64,
}

impl Outgoing {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether everything queued has been written.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Bytes written over the connection's life.
    pub fn written_total(&self) -> u64 {
        self.written_total
    }

    /// Bytes queued over the connection's life (written or not).
    pub fn queued_total(&self) -> u64 {
        self.written_total + self.queued as u64
    }

    /// Queues raw bytes (an HTTP response).
    pub fn push(&mut self, bytes: &[u8]) {
        self.tail(bytes.len()).extend_from_slice(bytes);
        self.queued += bytes.len();
    }

    /// Queues one unmasked, final frame.
    pub fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.push_frame_rsv(opcode, 0, payload);
    }

    /// Queues one unmasked, final frame with the given RSV bits (RSV1: compressed).
    pub fn push_frame_rsv(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) {
        let header = FrameHeader { rsv, ..FrameHeader::new(opcode, payload.len() as u64) };
        let len = header.encoded_len() + payload.len();
        let tail = self.tail(len);
        header.encode(tail);
        tail.extend_from_slice(payload);
        self.queued += len;
    }

    /// Queues a frame shared with other connections (no copy).
    pub fn push_shared(&mut self, frame: &SharedFrame) {
        self.queued += frame.len();
        self.chunks.push_back(Chunk::Shared(Arc::clone(frame)));
    }

    /// The chunk to append `additional` bytes to: the last one while it is
    /// ours and stays small, otherwise a new one sized for them.
    fn tail(&mut self, additional: usize) -> &mut Vec<u8> {
        let fits = matches!(self.chunks.back(), Some(Chunk::Owned(last)) if last.len() + additional <= COALESCE_LIMIT);
        if !fits {
            self.chunks.push_back(Chunk::Owned(crate::protocol::pool::take(additional.max(1024))));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Owned(last)) => last,
            // Unreachable: an owned chunk was just checked for or pushed.
            _ => unreachable!("the tail chunk is owned"),
        }
    }

    /// Writes until the queue is empty or the writer would block.
    ///
    /// Returns the number of bytes written. `WouldBlock` is not an error:
    /// the rest stays queued for the next WRITABLE event.
    pub fn write_to<W: Write + ?Sized>(&mut self, writer: &mut W) -> io::Result<usize> {
        let mut written = 0;
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let start = if i == 0 { self.head_written } else { 0 };
                slices[i] = IoSlice::new(&chunk.bytes()[start..]);
                count += 1;
            }
            match writer.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Marks `n` bytes as written: drops finished chunks, remembers how far into the next one we are.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        self.written_total += n as u64;
        while n > 0 {
            let Some(head) = self.chunks.front() else { break };
            let left = head.bytes().len() - self.head_written;
            if n >= left {
                n -= left;
                if let Some(Chunk::Owned(buf)) = self.chunks.pop_front() {
                    crate::protocol::pool::give(buf);
                }
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 16 {
            // One burst should not pin a large ring for the connection's life.
            self.chunks = VecDeque::new();
        }
    }

    /// Frees the (empty) queue's memory. A busy connection keeps its small
    /// ring from one reply to the next; a quiet one gives it back, so an idle
    /// connection holds no queue memory (see `WebSocketClient::write_to`).
    pub fn release(&mut self) {
        if self.is_empty() {
            self.chunks = VecDeque::new();
        }
    }

    /// Drops everything queued that has not started going out. A chunk that
    /// is partly written stays, so the peer still sees whole frames and the
    /// Close frame that will follow arrives intact.
    pub fn discard_unsent(&mut self) {
        let keep = if self.head_written > 0 { self.chunks.pop_front() } else { None };
        self.chunks = VecDeque::new();
        self.queued = 0;
        if let Some(head) = keep {
            self.queued = head.bytes().len() - self.head_written;
            self.chunks.push_back(head);
        } else {
            self.head_written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `step` bytes per call and then blocks every other call.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        block_next: bool,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if std::mem::take(&mut self.block_next) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.block_next = true;
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut queue = Outgoing::default();
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let payload = vec![i; usize::from(i) * 7];
            queue.push_frame(OpCode::Binary, &payload);
            crate::protocol::frame::encode(&mut expected, OpCode::Binary, &payload);
        }
        let big = vec![0xAB; 200_000];
        queue.push_frame(OpCode::Binary, &big);
        crate::protocol::frame::encode(&mut expected, OpCode::Binary, &big);
        assert_eq!(queue.len(), expected.len());

        for step in [1, 3, 1000, 70_000] {
            let mut q = Outgoing::default();
            for chunk in expected.chunks(5000) {
                q.push(chunk);
            }
            let mut w = Trickle { got: Vec::new(), step, block_next: false };
            let mut calls = 0;
            while !q.is_empty() {
                let before = q.len();
                let n = q.write_to(&mut w).unwrap();
                assert_eq!(before - q.len(), n);
                calls += 1;
                assert!(calls < 10_000_000);
            }
            assert_eq!(w.got, expected, "step {step}");
            assert_eq!(q.written_total(), expected.len() as u64);
        }

        let mut w = Trickle { got: Vec::new(), step: 4096, block_next: false };
        while !queue.is_empty() {
            queue.write_to(&mut w).unwrap();
        }
        assert_eq!(w.got, expected);
    }

    #[test]
    fn small_frames_share_a_chunk_and_large_ones_get_their_own() {
        let mut queue = Outgoing::default();
        for _ in 0..100 {
            queue.push_frame(OpCode::Text, b"hello");
        }
        assert_eq!(queue.chunks.len(), 1);
        queue.push_frame(OpCode::Binary, &vec![0; COALESCE_LIMIT]);
        assert_eq!(queue.chunks.len(), 2);
    }

    #[test]
    fn shared_frames_interleave_with_owned_bytes_in_order() {
        let shared: SharedFrame = Arc::from(&b"SHARED"[..]);
        let mut queue = Outgoing::default();
        queue.push(b"a");
        queue.push_shared(&shared);
        queue.push(b"b");
        queue.push_shared(&shared);
        assert_eq!(queue.len(), 14);
        assert_eq!(Arc::strong_count(&shared), 3, "referenced, not copied");
        let mut w = Trickle { got: Vec::new(), step: 3, block_next: false };
        while !queue.is_empty() {
            queue.write_to(&mut w).unwrap();
        }
        assert_eq!(w.got, b"aSHAREDbSHARED");
        assert_eq!(Arc::strong_count(&shared), 1, "released once written");
    }

    #[test]
    fn discarding_keeps_a_partly_written_chunk_whole() {
        let mut queue = Outgoing::default();
        queue.push(&[1; 10]);
        queue.push(&[2; COALESCE_LIMIT]);
        let mut w = Trickle { got: Vec::new(), step: 4, block_next: false };
        queue.write_to(&mut w).unwrap();
        assert_eq!(queue.len(), 6 + COALESCE_LIMIT);
        queue.discard_unsent();
        assert_eq!(queue.len(), 6, "the rest of the started chunk");
        queue.push(b"close");
        while !queue.is_empty() {
            queue.write_to(&mut w).unwrap();
        }
        assert_eq!(w.got, [&[1u8; 10][..], b"close"].concat());

        let mut untouched = Outgoing::default();
        untouched.push(b"never started");
        untouched.discard_unsent();
        assert!(untouched.is_empty());
    }

    #[test]
    fn a_writer_that_accepts_nothing_is_an_error_not_a_spin() {
        struct Zero;
        impl Write for Zero {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut queue = Outgoing::default();
        queue.push(b"x");
        assert_eq!(queue.write_to(&mut Zero).unwrap_err().kind(), io::ErrorKind::WriteZero);
        assert_eq!(queue.len(), 1, "nothing lost");
    }
}
