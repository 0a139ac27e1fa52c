//! The decoder's memory follows bytes that arrived, never a length the peer claims.
//! A counting allocator measures the peak heap growth of decoding hostile input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use morpc_codec::{Codec, CodecConfig, Framing, MAX_DECODE_RESERVE, RawMessage};
use proptest::prelude::*;

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn record(delta: i64) {
    if TRACKING.with(Cell::get) {
        let now = CURRENT.with(|c| {
            c.set(c.get() + delta);
            c.get()
        });
        PEAK.with(|p| p.set(p.get().max(now)));
    }
}

// SAFETY: forwards to the system allocator; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as i64);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as i64));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as i64 - layout.size() as i64);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap growth while decoding `bytes` until the decoder is stuck.
fn peak_while_decoding(codec: &Codec, bytes: &[u8]) -> usize {
    let mut buf = BytesMut::from(bytes);
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    while let Ok(Some(_)) = codec.decode::<RawMessage>(&mut buf) {}
    TRACKING.with(|t| t.set(false));
    drop(buf);
    PEAK.with(Cell::get).max(0) as usize
}

#[test]
fn claimed_length_does_not_allocate() {
    // 100 MiB claimed, 10 bytes sent: only the bounded reservation may happen.
    for framing in [Framing::V05, Framing::V07] {
        let codec = Codec::new(CodecConfig::new(framing));
        let claimed = codec.config().frame_limit() as u32;
        let mut frame = claimed.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x06, 1, 2, 3, 4, 5]);
        let peak = peak_while_decoding(&codec, &frame);
        assert!(
            peak <= 2 * MAX_DECODE_RESERVE + 1024,
            "{framing:?}: peak {peak}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_is_bounded_by_input_for_any_bytes(
        compression in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let codec = Codec::new(CodecConfig::new(Framing::V07).compression(compression));
        let peak = peak_while_decoding(&codec, &bytes);
        // LZ4 expands at most ~255×; plus the bounded reservation for a partial frame.
        let bound = 2 * MAX_DECODE_RESERVE + 256 * bytes.len() + 4096;
        prop_assert!(peak <= bound, "peak {} > bound {}", peak, bound);
    }
}
