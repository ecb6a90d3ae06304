//! Keeps a build's peak memory near what is live: large buffers in
//! mappings of their own, returned to the system when freed.
//!
//! glibc's malloc raises its mmap threshold each time a large block is
//! freed (up to 32 MiB), so after the first weight-sized buffer is
//! released, later ones come from the heap, and the pages they leave
//! behind there stay resident after they are freed. A firmware build of
//! ViT-B/16 (343 MB of weights) carried about 190 MB of such pages: 957 MB
//! peak with the sliding threshold, 765 MB with it fixed, for about 1 s
//! more of page faults in code generation.

/// Fixes glibc's mmap threshold at its default (128 KiB), turning off its
/// sliding adjustment, for commands whose peak memory matters more than
/// their allocation speed (compiling, building firmware). Run commands keep
/// the sliding threshold: the interpreter's many short-lived tensors are
/// ~40 % slower when every one is a fresh mapping.
pub(super) fn large_buffers_in_own_mappings() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes an allocator parameter; it takes the
    // allocator's locks itself and has no other preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
