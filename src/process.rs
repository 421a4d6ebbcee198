//! Process-level set-up done before the async runtime starts: detaching as
//! a daemon (`-daemon`) and raising the descriptor limit so the connection
//! limit, not RLIMIT_NOFILE, bounds how many clients we hold.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raise the soft RLIMIT_NOFILE towards `want` (capped by the hard limit).
/// Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let lim = getrlimit(Resource::Nofile);
    // None is RLIM_INFINITY.
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    // Root (CAP_SYS_RESOURCE) may raise the hard limit too; others get as
    // close as the hard limit allows.
    let hard = lim.maximum;
    let raised = Rlimit {
        current: Some(want),
        maximum: hard.map(|h| h.max(want)),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return Ok(want);
    }
    let capped = hard.map_or(want, |h| want.min(h));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(capped),
            maximum: hard,
        },
    )?;
    Ok(capped)
}

/// Detach like epmd's `run_daemon`: fork, setsid, fork again, chdir /,
/// stdio to /dev/null. Must run before any thread is started.
pub fn daemonize() -> io::Result<()> {
    fork_and_leave_parent()?;
    rustix::process::setsid()?;
    // SAFETY: SIG_IGN installs no handler code; nothing else in this
    // single-threaded process is changing signal dispositions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    fork_and_leave_parent()?;
    rustix::process::chdir("/")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}

/// fork(); the parent exits at once, the child returns. No safe wrapper
/// exists (nix's fork is unsafe too): after fork only the calling thread
/// survives, which is only sound while the process has one thread.
fn fork_and_leave_parent() -> io::Result<()> {
    // SAFETY: called before the tokio runtime or any other thread exists,
    // so the child is a complete copy; the parent leaves with _exit, which
    // runs no destructors or atexit handlers that could touch shared state.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        // SAFETY: _exit only ends this (parent) process.
        _ => unsafe { libc::_exit(0) },
    }
}
