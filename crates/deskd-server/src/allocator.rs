//! How the server asks glibc's allocator to give memory back (issue 29, online rebuild memory).
//!
//! A rebuild job allocates some 250 bytes an object for a few seconds (the snapshot's rows,
//! the walk's records, the plan) from many threads: the job's own, and its walkers', each with
//! an allocator arena of its own. Two glibc habits made a served volume's job cost more than
//! the same rebuild run as its own process, and kept much of it after the job:
//!
//! * the *dynamic* mmap threshold: once a large block given by `mmap` is freed, glibc raises
//!   the threshold to that block's size (up to 32 MiB), so later large buffers (a growing
//!   `Vec` of records, a hash table) come from the arenas' heaps, where they leave holes when
//!   they grow and are not given back when they are freed. [`configure`] fixes the threshold
//!   at [`MMAP_THRESHOLD`] at start-up: every large buffer is mapped and unmapped on its own.
//! * freed small blocks stay in their arena until a trim; a long-lived server rarely trims
//!   the thread arenas. [`give_back`] (`malloc_trim(0)`) returns every arena's free pages
//!   once a job ends.
//!
//! Neither changes what the server allocates, only where glibc puts it. On a libc other than
//! glibc both do nothing.

/// Blocks this large or larger are mapped on their own (glibc's default starting value,
/// made fixed).
pub(crate) const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fix glibc's mmap threshold (see the module's doc). Called once, before the server starts
/// its threads.
pub(crate) fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; it is called before the server's
        // threads start, and glibc takes its own lock for it anyway.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if ok != 1 {
            tracing::warn!("the allocator's mmap threshold could not be set");
        }
    }
}

/// Give every arena's free memory back to the system (after a rebuild job).
pub(crate) fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes each arena's lock and only releases free pages; it is
        // safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) };
    }
}
