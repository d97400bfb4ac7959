//! An oversized frame is refused before anything is allocated for it.
//!
//! This test binary counts the allocations of the current thread, so it lives on its own: the
//! counting allocator would otherwise see every other test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use triad_protocol::frame::{decode_frame, FrameError, FrameHeader, HEADER_LEN};
use triad_protocol::MAX_FRAME_DEFAULT;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

#[test]
fn oversized_frames_are_refused_without_allocating() {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&u32::MAX.to_le_bytes());

    let (parsed, bytes) = allocated_by(|| FrameHeader::parse(&header, MAX_FRAME_DEFAULT));
    assert!(matches!(parsed, Err(FrameError::TooLarge { .. })));
    assert_eq!(bytes, 0);

    let (decoded, bytes) = allocated_by(|| decode_frame(&header, MAX_FRAME_DEFAULT).map(|_| ()));
    assert!(matches!(decoded, Err(FrameError::TooLarge { .. })));
    assert_eq!(bytes, 0);

    // The counter works: an allocation of the announced size would have shown up.
    let (v, bytes) = allocated_by(|| vec![0u8; 1 << 20]);
    assert_eq!(bytes, v.len());
}
