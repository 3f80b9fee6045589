//! Heap bytes allocated by the current thread, for sizing what one synchronous piece of
//! work keeps (the subscription snapshot). A thread-local counter around the system
//! allocator: no shared cache line, so the load generator, receiver and relay running
//! on other threads pay one local add per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    static NET_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    // `try_with`: during thread teardown the counter may already be gone.
    let _ = NET_BYTES.try_with(|n| n.set(n.get() + bytes));
}

// SAFETY: every call is forwarded to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

/// Net bytes this thread has allocated so far (allocations minus frees).
pub fn thread_net_bytes() -> isize {
    NET_BYTES.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_the_thread_keeps_and_forgets_what_it_frees() {
        let before = thread_net_bytes();
        let kept = vec![0u8; 10_000];
        drop(vec![0u8; 50_000]);
        assert_eq!(thread_net_bytes() - before, 10_000);
        drop(kept);
        assert_eq!(thread_net_bytes(), before);
    }
}
