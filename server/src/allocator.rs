//! Settings of the C allocator for inference: each forward pass allocates and frees tensors of
//! several megabytes, and with glibc's defaults they are fresh `mmap`s, or heap memory handed
//! back to the system when freed, so every pass page-faults its buffers in again (a fifth of
//! the CPU time of `rollcall eval` went to the kernel's page faults).

/// Keeps freed memory in the process for reuse: allocations up to 32 MiB (glibc's largest
/// setting) come from the heap, and the heap is never trimmed. Does nothing when
/// `GLIBC_TUNABLES` is set (the operator's settings win) or off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: `mallopt` only changes allocator parameters; it is called before any
        // inference thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}
