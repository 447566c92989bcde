//! The agent's only `unsafe` code: fork and exec of a generation (into its
//! cgroup, or its own session), the priority change of a process group,
//! taking ownership of the fds a previous image of the agent handed over, and
//! registering a pidfd with tokio's reactor.
//!
//! Why fork by hand instead of `std::process::Command`: the systemd protocol
//! wants `LISTEN_PID` to be the child's own pid, which exists only after the
//! fork, and the child of a multi-threaded process may only make
//! async-signal-safe calls until it execs (no allocation, no locks, so no
//! `setenv`). Everything the child needs (argv, envp, the `LISTEN_PID=` buffer,
//! scratch space for fd numbers) is allocated here before the fork; the child
//! only writes into that memory and makes raw syscalls.
//!
//! The "fork" is `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: the
//! child runs on a stack of its own in the agent's memory until it execs,
//! and the calling thread sleeps until then. A real fork would copy the
//! agent's page tables only for exec to throw the copy away; with many
//! threads and a warm heap that costs a few hundred microseconds per
//! generation, on the path from a restart request to the new generation.
//!
//! Where the kernel has it (Linux 5.7+, x86-64), the clone is `clone3` with
//! `CLONE_INTO_CGROUP`: the child is born in its generation's cgroup. Moving
//! a running process there by writing `cgroup.procs` takes the kernel's
//! cgroup-wide threadgroup lock for writing, which now and then waits out an
//! RCU grace period: up to ~16 ms on the restart path, against nothing when
//! the process is created in place.
#![allow(unsafe_code)]

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::unistd::Pid;
use std::ffi::{CString, c_char, c_int};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Who the child runs as, resolved before the fork (looking a user up reads
/// files and allocates, which the child may not do).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

pub struct SpawnSpec<'a> {
    /// A path execve accepts as is: PATH was searched by the caller.
    pub program: CString,
    pub argv: Vec<CString>,
    /// The whole environment, without `LISTEN_PID`, which the child adds itself.
    pub env: Vec<CString>,
    /// Become fds 3, 4, ... in the child, in this order.
    pub fds: Vec<BorrowedFd<'a>>,
    /// Become the child's fds 1 and 2 (its captured output); `None` leaves
    /// the agent's own.
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
    pub listen_pid: bool,
    pub workdir: Option<CString>,
    pub credentials: Option<Credentials>,
    /// Nice value the child starts with (0: inherit).
    pub nice: i32,
    /// The generation's cgroup folder: the child is created in it when the
    /// kernel can do that.
    pub cgroup_dir: Option<BorrowedFd<'a>>,
    /// The `cgroup.procs` of the generation's cgroup: when the child could not
    /// be created in it, the child moves itself there before anything else.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// Start a session of its own (`setsid`) instead of only a process group:
    /// without cgroups, this is what keeps another generation's processes
    /// from joining its group (`setpgid` fails across sessions).
    pub new_session: bool,
}

/// The step of the child's setup that failed, sent to the parent with errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ChildStep {
    ProcessGroup = 1,
    PassFds = 2,
    Nice = 3,
    Groups = 4,
    Gid = 5,
    Uid = 6,
    Workdir = 7,
    Exec = 8,
    Cgroup = 9,
    Session = 10,
    Output = 11,
}

impl ChildStep {
    fn from_code(code: u32) -> Option<ChildStep> {
        use ChildStep::*;
        [
            ProcessGroup,
            PassFds,
            Nice,
            Groups,
            Gid,
            Uid,
            Workdir,
            Exec,
            Cgroup,
            Session,
            Output,
        ]
        .into_iter()
        .find(|s| *s as u32 == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            ChildStep::ProcessGroup => "setpgid",
            ChildStep::PassFds => "passing the sockets",
            ChildStep::Nice => "setpriority",
            ChildStep::Groups => "setgroups",
            ChildStep::Gid => "setgid",
            ChildStep::Uid => "setuid",
            ChildStep::Workdir => "chdir to the workdir",
            ChildStep::Exec => "exec",
            ChildStep::Cgroup => "joining the generation's cgroup",
            ChildStep::Session => "setsid",
            ChildStep::Output => "placing stdout and stderr",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("fork failed: {0}")]
    Fork(Errno),
    #[error("could not create the exec status pipe: {0}")]
    Pipe(Errno),
    #[error("{} failed: {errno}", step.describe())]
    Child {
        step: ChildStep,
        errno: Errno,
        pid: Pid,
    },
}

/// A forked child whose exec has not been confirmed yet.
pub struct Forked {
    pub pid: Pid,
    status_pipe: OwnedFd,
}

/// Forks and execs `spec`. The child joins the generation's cgroup if it has
/// one, and is the leader of a new process group (of a new session without
/// cgroups), so the whole generation (workers included) can be signalled at
/// once.
///
/// Returns right after the fork, so the caller can register the pid with the
/// reaper before the child can possibly be reaped; [`Forked::wait_exec`] then
/// tells whether the exec happened.
pub fn fork_exec(spec: &SpawnSpec<'_>) -> Result<Forked, SpawnError> {
    let (status_read, status_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;

    let argv: Vec<*const c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    // "LISTEN_PID=" + up to 20 digits + NUL; the child fills in the digits.
    let mut listen_pid = [0u8; 11 + 21];
    listen_pid[..11].copy_from_slice(b"LISTEN_PID=");
    let mut envp: Vec<*const c_char> = spec.env.iter().map(|e| e.as_ptr()).collect();
    if spec.listen_pid {
        envp.push(listen_pid.as_ptr().cast());
    }
    envp.push(ptr::null());
    let source_fds: Vec<RawFd> = spec.fds.iter().map(|fd| fd.as_raw_fd()).collect();
    // One slot per socket, then one each for stdout and stderr.
    let mut scratch_fds: Vec<RawFd> = vec![-1; source_fds.len() + 2];
    let stdio_fds = [
        spec.stdout.map_or(-1, |fd| fd.as_raw_fd()),
        spec.stderr.map_or(-1, |fd| fd.as_raw_fd()),
    ];
    let groups: Vec<libc::gid_t> = spec
        .credentials
        .as_ref()
        .map(|c| c.groups.clone())
        .unwrap_or_default();

    let mut setup = ChildSetup {
        program: spec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        listen_pid: if spec.listen_pid {
            listen_pid.as_mut_ptr()
        } else {
            ptr::null_mut()
        },
        source_fds: &source_fds,
        stdio_fds,
        scratch_fds: scratch_fds.as_mut_ptr(),
        workdir: spec.workdir.as_ref().map(|w| w.as_ptr()),
        credentials: spec.credentials.as_ref().map(|c| (c.uid, c.gid)),
        groups: &groups,
        nice: spec.nice,
        // Set below, once it is known whether the child is born in its cgroup.
        cgroup_procs: None,
        new_session: spec.new_session,
        status_fd: status_write.as_raw_fd(),
    };

    let stack = ChildStack::new().map_err(SpawnError::Fork)?;
    // Every signal stays blocked from before the clone until the child has
    // reset the dispositions: a handler of the agent's must never run on the
    // child's side of the shared memory.
    let mut previous = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )
    .map_err(SpawnError::Fork)?;
    let mut born_in_cgroup = None;
    if let Some(dir) = spec.cgroup_dir
        && CLONE3_INTO_CGROUP.load(Ordering::Relaxed)
    {
        // SAFETY: as for the `libc::clone` below; `setup.cgroup_procs` is
        // None, so the child does not move itself.
        let pid = unsafe { clone3_into_cgroup(&setup, &stack, dir.as_raw_fd()) };
        let errno = Errno::last();
        if pid >= 0 || !clone3_unavailable(errno) {
            born_in_cgroup = Some((pid, errno));
        } else {
            CLONE3_INTO_CGROUP.store(false, Ordering::Relaxed);
            tracing::info!(
                error = %errno,
                "clone3 into a cgroup unavailable; generations join their cgroup after the fork"
            );
        }
    }
    let (pid, clone_errno) = born_in_cgroup.unwrap_or_else(|| {
        setup.cgroup_procs = spec.cgroup_procs.map(|fd| fd.as_raw_fd());
        // SAFETY: the child shares this memory (CLONE_VM) and this thread is
        // suspended until the child execs or exits (CLONE_VFORK), so `setup`
        // and everything it points to stays alive and unchanged while the
        // child reads it. The child runs only `child_entry` on its own stack,
        // makes raw syscalls without allocating or taking locks, never
        // unwinds and never returns into our frames (it execs or `_exit`s).
        // Its signal handlers are a copy (no CLONE_SIGHAND), so resetting
        // them leaves ours alone.
        let pid = unsafe {
            libc::clone(
                child_entry,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw const setup).cast_mut().cast(),
            )
        };
        (pid, Errno::last())
    });
    // Cannot fail: the mask is one this thread had a moment ago.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    drop(stack);
    if pid < 0 {
        return Err(SpawnError::Fork(clone_errno));
    }
    drop(status_write);
    Ok(Forked {
        pid: Pid::from_raw(pid),
        status_pipe: status_read,
    })
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` still looks usable: cleared the
/// first time the kernel (or a seccomp filter) refuses it.
static CLONE3_INTO_CGROUP: AtomicBool = AtomicBool::new(cfg!(target_arch = "x86_64"));

/// Errors that say "this kernel or sandbox has no clone3 into a cgroup", as
/// opposed to a failure of this one spawn (EAGAIN, ENOMEM, a full cgroup).
fn clone3_unavailable(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG | Errno::EPERM | Errno::EOPNOTSUPP
    )
}

/// `struct clone_args` of linux/sched.h, up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)` running `child_entry`
/// on `stack`. glibc exports no clone3 wrapper, and a raw `syscall()` cannot
/// be used with a new stack: the child would return from it into frames that
/// are not on its stack. So the child's first instructions are written here,
/// as glibc's own clone3 does: call `child_entry(setup)`, then exit.
///
/// SAFETY (for callers): the same as for the `libc::clone` in `fork_exec`:
/// every signal blocked, `setup` valid until the child execs or exits (this
/// thread sleeps until then: CLONE_VFORK), `stack` mapped and used by nobody
/// else.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into_cgroup(setup: &ChildSetup<'_>, stack: &ChildStack, cgroup: RawFd) -> c_int {
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base as u64,
        stack_size: ChildStack::SIZE as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    let entry: extern "C" fn(*mut libc::c_void) -> c_int = child_entry;
    let result: i64;
    // SAFETY: see the function's documentation. The kernel starts the child
    // with its stack pointer at the top of `stack` (16-byte aligned, so the
    // call below leaves it as the ABI expects) and every other register as
    // the parent's, so r12 and r13 still hold the entry and its argument. The
    // child never comes back to this frame: `child_entry` execs or `_exit`s,
    // and should it return, the exit syscall follows.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => result,
            in("rdi") &raw const args,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") (setup as *const ChildSetup<'_>).cast_mut(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if result < 0 {
        Errno::set_raw(-result as i32);
        return -1;
    }
    result as c_int
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_into_cgroup(_: &ChildSetup<'_>, _: &ChildStack, _: RawFd) -> c_int {
    Errno::set_raw(libc::ENOSYS);
    -1
}

impl Forked {
    /// Blocks until the child has exec'd (the pipe closes on exec) or reported
    /// the step that failed. Takes well under a millisecond normally.
    pub fn wait_exec(self) -> Result<Pid, SpawnError> {
        let mut report = [0u8; 8];
        let mut filled = 0;
        while filled < report.len() {
            match nix::unistd::read(&self.status_pipe, &mut report[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(SpawnError::Child {
                        step: ChildStep::Exec,
                        errno,
                        pid: self.pid,
                    });
                }
            }
        }
        if filled == 0 {
            return Ok(self.pid);
        }
        let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
        let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
        Err(SpawnError::Child {
            step: ChildStep::from_code(step).unwrap_or(ChildStep::Exec),
            errno: Errno::from_raw(errno),
            pid: self.pid,
        })
    }
}

struct ChildSetup<'a> {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    listen_pid: *mut u8,
    source_fds: &'a [RawFd],
    /// The child's fds 1 and 2 to be, -1 to keep the agent's.
    stdio_fds: [RawFd; 2],
    /// Room for `source_fds.len() + 2` fd numbers.
    scratch_fds: *mut RawFd,
    workdir: Option<*const c_char>,
    credentials: Option<(u32, u32)>,
    groups: &'a [libc::gid_t],
    nice: i32,
    cgroup_procs: Option<RawFd>,
    new_session: bool,
    status_fd: RawFd,
}

/// The child's stack while it shares the agent's memory: mapped fresh for
/// each spawn, with an inaccessible lowest page so an overflow faults
/// instead of writing over the agent's heap.
struct ChildStack {
    base: *mut libc::c_void,
}

impl ChildStack {
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;

    fn new() -> Result<ChildStack, Errno> {
        // SAFETY: a new private anonymous mapping that nothing else refers to.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = ChildStack { base };
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(Errno::last());
        }
        Ok(stack)
    }

    /// Stacks grow down: the child starts at the end, which mmap aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, as clone expects.
        unsafe { self.base.cast::<u8>().add(Self::SIZE).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child that used it has
        // exec'd or exited by the time the vfork-style clone returns.
        unsafe { libc::munmap(self.base, Self::SIZE) };
    }
}

extern "C" fn child_entry(setup: *mut libc::c_void) -> c_int {
    // SAFETY: `fork_exec` passes a pointer to its `ChildSetup`, alive until
    // the child execs or exits.
    unsafe { child_main(&*setup.cast::<ChildSetup<'_>>()) }
}

/// Runs in the cloned child. Only async-signal-safe raw syscalls; no
/// allocation, no locks, no panics (no indexing that could fail, no `expect`).
///
/// SAFETY (for callers): must be called only in the child of the
/// vfork-style clone in `fork_exec`, with every signal blocked, and a `setup`
/// whose pointers are valid in the shared memory.
unsafe fn child_main(setup: &ChildSetup<'_>) -> ! {
    unsafe {
        // Dispositions set to "ignore" survive exec (Rust ignores SIGPIPE) and
        // so does the signal mask: give the service the defaults it expects.
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, ptr::null_mut());

        // First, so that every process the service ever starts is in it.
        if let Some(procs) = setup.cgroup_procs
            && libc::write(procs, b"0".as_ptr().cast(), 1) != 1
        {
            fail(setup.status_fd, ChildStep::Cgroup);
        }
        if setup.new_session {
            if libc::setsid() < 0 {
                fail(setup.status_fd, ChildStep::Session);
            }
        } else if libc::setpgid(0, 0) != 0 {
            fail(setup.status_fd, ChildStep::ProcessGroup);
        }

        // Move the sockets out of the way first, above every target number,
        // so that placing fd i at 3+i never overwrites a source still needed.
        let count = setup.source_fds.len() as c_int;
        let floor = 3 + count;
        for (i, fd) in setup.source_fds.iter().enumerate() {
            let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, floor);
            if moved < 0 {
                fail(setup.status_fd, ChildStep::PassFds);
            }
            *setup.scratch_fds.add(i) = moved;
        }
        // The output's pipes too: one may have a number among 3.. that a
        // socket is about to take.
        for (i, fd) in setup.stdio_fds.iter().enumerate() {
            let mut moved = -1;
            if *fd >= 0 {
                moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, floor);
                if moved < 0 {
                    fail(setup.status_fd, ChildStep::Output);
                }
            }
            *setup.scratch_fds.add(count as usize + i) = moved;
        }
        for i in 0..count {
            // dup2 clears close-on-exec on the target: these are the fds we pass.
            if libc::dup2(*setup.scratch_fds.add(i as usize), 3 + i) < 0 {
                fail(setup.status_fd, ChildStep::PassFds);
            }
        }
        for i in 0..2 {
            let moved = *setup.scratch_fds.add(count as usize + i as usize);
            if moved >= 0 && libc::dup2(moved, 1 + i) < 0 {
                fail(setup.status_fd, ChildStep::Output);
            }
        }
        // Anything else open in the agent must not leak into the service, even
        // if some library forgot O_CLOEXEC. Marking (not closing) keeps the
        // status pipe usable until exec.
        libc::syscall(
            libc::SYS_close_range,
            floor as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );

        if setup.nice != 0 && libc::setpriority(libc::PRIO_PROCESS, 0, setup.nice) != 0 {
            fail(setup.status_fd, ChildStep::Nice);
        }
        // Raw syscalls, not the libc wrappers: those make every thread of a
        // multi-threaded process change credentials, and in this child the
        // thread list they would walk is the agent's.
        if let Some((uid, gid)) = setup.credentials {
            if libc::syscall(
                libc::SYS_setgroups,
                setup.groups.len(),
                setup.groups.as_ptr(),
            ) != 0
            {
                fail(setup.status_fd, ChildStep::Groups);
            }
            if libc::syscall(libc::SYS_setgid, gid) != 0 {
                fail(setup.status_fd, ChildStep::Gid);
            }
            if libc::syscall(libc::SYS_setuid, uid) != 0 {
                fail(setup.status_fd, ChildStep::Uid);
            }
        }
        if let Some(dir) = setup.workdir
            && libc::chdir(dir) != 0
        {
            fail(setup.status_fd, ChildStep::Workdir);
        }
        if !setup.listen_pid.is_null() {
            write_decimal(setup.listen_pid.add(11), libc::getpid() as u64);
        }
        libc::execve(setup.program, setup.argv, setup.envp);
        fail(setup.status_fd, ChildStep::Exec)
    }
}

/// Writes `value` in decimal followed by NUL. The buffer has room for 21 bytes.
unsafe fn write_decimal(out: *mut u8, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for i in 0..n {
        // SAFETY: n <= 20 and the caller's buffer holds 21 bytes.
        unsafe { *out.add(i) = digits[n - 1 - i] };
    }
    // SAFETY: as above, index n <= 20.
    unsafe { *out.add(n) = 0 };
}

unsafe fn fail(status_fd: RawFd, step: ChildStep) -> ! {
    unsafe {
        let errno = *libc::__errno_location();
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        report[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(status_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// Keeps the allocator to two arenas. glibc gives each thread that allocates
/// an arena of its own (up to eight per core); the agent's statuses of a
/// thousand services are built on one worker thread and freed on another,
/// and every arena kept its own high-water mark. Call it first thing, before
/// any other thread exists.
pub fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only sets a parameter of the allocator; it is called
    // before the runtime starts any thread, and an unknown parameter is
    // refused with 0, never undefined behaviour.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Sets the nice value of every process in group `pgid`. Lowering it again
/// (raising priority) needs CAP_SYS_NICE, which an unprivileged agent lacks.
pub fn set_group_nice(pgid: Pid, nice: i32) -> Result<(), Errno> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PGRP, pgid.as_raw() as libc::id_t, nice) };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// Sets or clears close-on-exec on an fd by number: the handover passes fds
/// that are owned elsewhere in the agent (by tokio and socket2 types).
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD changes only the fd's flags; an invalid number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of an fd inherited from the agent's previous image.
///
/// The number comes from the handover the previous image wrote just before
/// exec; nothing else in this process knows it, so ownership is unique. The fd
/// is checked to be open and made close-on-exec again.
pub fn adopt_inherited_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 3 {
        return Err(std::io::Error::other(format!(
            "fd {fd} cannot be a handed-over socket"
        )));
    }
    // SAFETY: F_GETFD only reads the flags of an fd number; no memory is touched.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above) and owned by nobody else in this
    // process (see the function's documentation).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(owned)
}

/// Registers a pidfd (or any fd the caller owns) with tokio's reactor, so
/// that its readiness can be awaited: a pidfd turns readable when its
/// process exits.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `register` wants the fd to stay open and the same for the
    // AsyncFd's whole life: the AsyncFd owns the `OwnedFd`, which closes it
    // only when dropped, and `as_raw_fd` of an `OwnedFd` never changes.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Given only the cgroup's folder (no `cgroup.procs` to write), the child
    /// can be in the cgroup only if it was created there.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_child_is_born_in_its_generation_cgroup() {
        let cgroups = crate::cgroup::Cgroups::detect(true)
            .expect("a writable cgroup v2 hierarchy (the build machines have one)");
        let cgroup = cgroups.create("sys-test", 1).unwrap();
        let spec = SpawnSpec {
            program: CString::new("/bin/sleep").unwrap(),
            argv: vec![CString::new("sleep").unwrap(), CString::new("30").unwrap()],
            env: vec![],
            fds: vec![],
            stdout: None,
            stderr: None,
            listen_pid: false,
            workdir: None,
            credentials: None,
            nice: 0,
            cgroup_dir: Some(cgroup.dir.as_fd()),
            cgroup_procs: None,
            new_session: false,
        };
        let pid = fork_exec(&spec).unwrap().wait_exec().unwrap();
        let seen = crate::cgroup::of_pid(pid.as_raw());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(pid, None).unwrap();
        cgroups.remove(&cgroup.relative);
        cgroups.remove_all();
        assert!(CLONE3_INTO_CGROUP.load(Ordering::Relaxed));
        assert_eq!(seen.as_deref(), Some(cgroup.relative.as_str()));
    }

    #[test]
    fn decimal_digits() {
        for value in [0u64, 7, 10, 12345, u64::MAX] {
            let mut buf = [0xffu8; 21];
            unsafe { write_decimal(buf.as_mut_ptr(), value) };
            let end = buf.iter().position(|b| *b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), value.to_string());
        }
    }
}
