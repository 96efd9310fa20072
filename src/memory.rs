//! Giving freed heap back to the operating system. glibc's allocator keeps freed memory for reuse,
//! so a burst of allocations (the index's recovery at open, an eviction pass) would otherwise stay
//! in the resident set for the life of the process, though nothing uses it.

/// Return the free heap at the top of every arena to the operating system (glibc's `malloc_trim`;
/// nothing elsewhere).
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; any argument is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}
