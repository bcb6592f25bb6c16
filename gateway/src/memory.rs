//! Per-thread accounting of heap memory, so the script sandbox can bound what one run
//! allocates. Rhai's own limits count string lengths and collection sizes, but not everything
//! a script can hold (map keys, values captured by closures), so the sandbox checks the bytes
//! its thread has allocated instead.
//!
//! [`CountingAllocator`] wraps the real allocator and keeps, per thread, the bytes allocated
//! minus the bytes freed. The binary installs it as the global allocator; where it is not
//! installed (unit tests), the count stays zero and no memory limit applies.

// A global allocator is unsafe to implement by definition; this is the crate's only unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

thread_local! {
    // Const-initialised and without a destructor, so it is safe to touch from inside the
    // allocator, even while a thread is being torn down.
    static NET_ALLOCATED: Cell<isize> = const { Cell::new(0) };
}

/// Bytes allocated minus bytes freed by this thread since it started (wrapping, so only
/// differences between two readings mean anything).
pub fn thread_net_allocated() -> isize {
    NET_ALLOCATED.try_with(Cell::get).unwrap_or(0)
}

fn add(delta: isize) {
    let _ = NET_ALLOCATED.try_with(|net| net.set(net.get().wrapping_add(delta)));
}

/// Wraps an allocator and counts, per thread, what passes through it.
pub struct CountingAllocator<A>(pub A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator, which upholds the
// GlobalAlloc contract; the bookkeeping touches only a thread-local integer.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = self.0.alloc(layout);
        if !pointer.is_null() {
            add(layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = self.0.alloc_zeroed(layout);
        if !pointer.is_null() {
            add(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        self.0.dealloc(pointer, layout);
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = self.0.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        moved
    }
}
