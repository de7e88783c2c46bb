//! The word-at-a-time mask equals the RFC's byte loop, for any key, offset
//! and length, and masking twice gives the input back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_chat::protocol::{apply_mask, apply_mask_naive};

fuzz_target!(|data: &[u8]| {
    let [k0, k1, k2, k3, offset, payload @ ..] = data else { return };
    let key = [*k0, *k1, *k2, *k3];
    let offset = usize::from(*offset);
    let mut fast = payload.to_vec();
    let mut slow = payload.to_vec();
    apply_mask(&mut fast, key, offset);
    apply_mask_naive(&mut slow, key, offset);
    assert_eq!(fast, slow);
    apply_mask(&mut fast, key, offset);
    assert_eq!(fast, payload);
});
