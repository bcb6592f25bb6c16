//! Scheduling of the gateway's background threads: the run journal's writer and checkpointer,
//! the threads of the accepted-run pool, and the journal's retention.
//!
//! Every accepted request wakes the journal writer (to commit its run) and the run pool (to
//! start it). Woken normally, each of those threads preempts the request thread at once, so
//! on a busy core they run one change or one run per wake-up and pay a context switch for
//! each. Marked as batch threads, they wait until the request thread blocks or its time
//! slice ends, then work through everything queued in one go: fewer switches, and larger
//! commits. They still get their fair share of the CPU.

/// Marks the calling thread as batch work for the scheduler (Linux `SCHED_BATCH`). Elsewhere,
/// or where the call is refused (some sandboxes), the thread keeps the default policy, which
/// only costs speed.
pub fn mark_as_batch() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads `param` during the call only; pid 0 is this thread.
        #[allow(unsafe_code)]
        let refused = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0;
        if refused {
            tracing::debug!(
                error.detail = %std::io::Error::last_os_error(),
                "background thread keeps the default scheduling policy"
            );
        }
    }
}

/// Marks the calling thread as maintenance: batch work (above) at a lower priority (nice 10),
/// so that on a busy core it gets about a tenth of the time the request threads get, and all
/// of an idle one. Elsewhere, or where refused, the thread keeps its priority.
pub fn mark_as_maintenance() {
    mark_as_batch();
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on this thread (Linux keeps a nice value per thread).
        #[allow(unsafe_code)]
        let refused = unsafe {
            let thread = libc::gettid() as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread, 10)
        } != 0;
        if refused {
            tracing::debug!(
                error.detail = %std::io::Error::last_os_error(),
                "maintenance thread keeps its priority"
            );
        }
    }
}
