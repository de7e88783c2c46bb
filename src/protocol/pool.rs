//! A small pool of byte buffers, reused between messages and connections.
//!
//! Large messages need large buffers: one to reassemble a message, one to
//! queue its reply. Allocating and freeing them for every message costs more
//! than the copy itself (glibc grows and trims its heap with a `brk` system
//! call nearly every time for 64 KiB buffers). The event loop has one thread,
//! so one thread-local pool serves everything without locks. It is bounded:
//! at most [`MAX_POOLED`] buffers of at most [`MAX_BUFFER`] bytes each are
//! kept, and small buffers are not pooled at all.

use std::cell::RefCell;

/// Buffers kept at most.
pub const MAX_POOLED: usize = 32;
/// Larger buffers are freed, not kept.
pub const MAX_BUFFER: usize = 4 << 20;
/// Smaller buffers are cheap to allocate: not worth keeping.
pub const MIN_BUFFER: usize = 16 << 10;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes: a pooled one if
/// one is large enough, a new one otherwise.
pub fn take(capacity: usize) -> Vec<u8> {
    if capacity >= MIN_BUFFER {
        let pooled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let index = pool.iter().rposition(|buf| buf.capacity() >= capacity)?;
            Some(pool.swap_remove(index))
        });
        if let Some(buf) = pooled {
            return buf;
        }
    }
    Vec::with_capacity(capacity)
}

/// Returns a buffer for reuse (or frees it, if it is small, huge, or the pool is full).
pub fn give(mut buf: Vec<u8>) {
    if !(MIN_BUFFER..=MAX_BUFFER).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_the_pool_is_bounded() {
        let buf = take(64 << 10);
        let ptr = buf.as_ptr();
        give(buf);
        let again = take(32 << 10);
        assert_eq!(again.as_ptr(), ptr, "reused");
        assert!(again.is_empty());
        // Small and huge buffers are not kept; the pool never holds more than MAX_POOLED.
        give(Vec::with_capacity(100));
        give(Vec::with_capacity(MAX_BUFFER + 1));
        for _ in 0..MAX_POOLED * 2 {
            give(Vec::with_capacity(MIN_BUFFER));
        }
        POOL.with(|pool| assert!(pool.borrow().len() <= MAX_POOLED));
        POOL.with(|pool| assert!(pool.borrow().iter().all(|b| (MIN_BUFFER..=MAX_BUFFER).contains(&b.capacity()))));
    }
}
