//! Masking (RFC 6455 §5.3) [Rust in Detail, Part 2 §18: `apply_mask`].
//!
//! Every frame a client sends is XORed with a 4-byte key it picks per frame,
//! so that a browser's frames cannot be made to look like some other
//! protocol to a proxy on the path. Unmasking is the same XOR.

/// XORs `buf` with the masking `key` (RFC 6455 §5.3) [Part 2 §18].
///
/// `offset` is the position of `buf[0]` within the frame's payload, so a
/// payload that arrives in pieces can be unmasked piece by piece.
///
/// Works eight bytes at a time: the 4-byte key, rotated to `offset` and
/// doubled, is XORed into each 8-byte word. No `unsafe`; the compiler turns
/// the word loop into SIMD. [`apply_mask_naive`] is the byte-at-a-time
/// definition it is tested against.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let rotated = rotate_key(key, offset);
    let (words, tail) = buf.as_chunks_mut::<8>();
    // The key twice over, as one word: in either byte order the 8 bytes
    // `k k` read as a u64 are the 4 bytes `k` read as a u32, times 2^32 + 1
    // (a multiply, where building the word byte by byte took some 25 instructions).
    let key64 = u64::from(u32::from_ne_bytes(rotated)) * 0x1_0000_0001;
    for word in words.iter_mut() {
        *word = (u64::from_ne_bytes(*word) ^ key64).to_ne_bytes();
    }
    // The words covered a multiple of 8 (so of 4) bytes: the tail starts at key index 0.
    for (byte, k) in tail.iter_mut().zip(rotated.iter().cycle()) {
        *byte ^= k;
    }
}

/// The plain loop from the RFC: `j = i MOD 4; transformed[i] = original[i] XOR key[j]`.
/// Kept as the oracle that [`apply_mask`] is tested against.
pub fn apply_mask_naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) % 4];
    }
}

fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = key;
    rotated.rotate_left(offset % 4);
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fast_mask_matches_the_naive_loop_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(31)).collect();
        for len in 0..data.len() {
            for offset in 0..8 {
                let mut fast = data[..len].to_vec();
                let mut slow = data[..len].to_vec();
                apply_mask(&mut fast, key, offset);
                apply_mask_naive(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..=255).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for cut in 0..data.len() {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(pieces, whole, "cut {cut}");
        }
    }

    proptest! {
        #[test]
        fn fast_mask_equals_naive(data in prop::collection::vec(any::<u8>(), 0..200), key in any::<[u8; 4]>(), offset in 0usize..16) {
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask(&mut fast, key, offset);
            apply_mask_naive(&mut slow, key, offset);
            prop_assert_eq!(fast, slow);
        }
    }
}
