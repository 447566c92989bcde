//! The two pipes of a generation's stdout and stderr, and their readers.
//!
//! The pipes are made before the fork, close-on-exec on the agent's side.
//! The generation gets the write ends as its fds 1 and 2, and also a copy of
//! each read end (after its sockets and its channel), which it never reads:
//! while the generation lives, its pipes always have a reader, so a write
//! never fails with EPIPE (or kills it with SIGPIPE), even when the agent
//! is killed. With no agent reading, a write then waits only once the pipe's
//! buffer (raised to 1 MiB) is full, until the next agent takes the read
//! ends back from the generation (`pidfd_getfd`) and reads on.
//!
//! On an upgrade the read ends go across the exec like the sockets; the
//! readers are stopped first and every line they read is in the files.

use super::ServiceOutput;
use super::lines::{LineSplitter, MAX_LINE};
use crate::handover::OutputHandover;
use baton_proto::OutputStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How much a pipe holds while nobody reads it (the agent is being
/// replaced, or was killed): 1 MiB, the most an unprivileged process may
/// ask for by default (`/proc/sys/fs/pipe-max-size`).
const PIPE_BUFFER: i32 = 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;
const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

/// What the generation gets: its fds 1 and 2, and the spare read ends it
/// holds so its pipes never lose their last reader.
pub struct ChildEnds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub spare_reads: [OwnedFd; 2],
}

/// The agent's read ends of one generation's output, and their readers.
pub struct Captured {
    reads: [OwnedFd; 2],
    inodes: [u64; 2],
    stop: CancellationToken,
    /// Each stream's reader (by index: stdout, stderr), which gives back the
    /// start of a line it read when it is stopped.
    readers: Vec<(usize, JoinHandle<Vec<u8>>)>,
    /// What the stopped readers gave back, for the next ones.
    partial: [Vec<u8>; 2],
}

/// Two pipes for a generation about to be spawned.
pub fn pipes() -> std::io::Result<(Captured, ChildEnds)> {
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let spare_reads = [out_read.try_clone()?, err_read.try_clone()?];
    let reads = [out_read, err_read];
    let inodes = [inode(&reads[0])?, inode(&reads[1])?];
    Ok((
        Captured {
            reads,
            inodes,
            stop: CancellationToken::new(),
            readers: Vec::new(),
            partial: Default::default(),
        },
        ChildEnds {
            stdout: out_write,
            stderr: err_write,
            spare_reads,
        },
    ))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Best effort: a smaller buffer only makes a service wait sooner while
    // no agent reads.
    let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BUFFER));
    Ok((read, write))
}

fn inode(fd: &impl AsFd) -> std::io::Result<u64> {
    Ok(nix::sys::stat::fstat(fd.as_fd())?.st_ino)
}

impl Captured {
    /// Starts reading (again, after a failed upgrade).
    pub fn start(&mut self, output: &Arc<ServiceOutput>, generation: u64) {
        self.stop = CancellationToken::new();
        self.readers.clear();
        for (index, (read, stream)) in self.reads.iter().zip(STREAMS).enumerate() {
            let fd = match read.try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(service = %output.name, generation, error = %e, "cannot read the generation's output");
                    continue;
                }
            };
            let begun = std::mem::take(&mut self.partial[index]);
            output.reader_started(generation);
            let task = read_lines(
                fd,
                stream,
                generation,
                begun,
                output.clone(),
                self.stop.clone(),
            );
            self.readers.push((index, tokio::spawn(task)));
        }
    }

    /// Stops the readers and waits until each has handed on what it read:
    /// before the read ends go across an exec.
    pub async fn pause(&mut self) {
        self.stop.cancel();
        for (index, reader) in self.readers.drain(..) {
            if let Ok(begun) = reader.await {
                self.partial[index] = begun;
            }
        }
    }

    /// The start of a line each paused reader had read.
    pub fn partial(&self) -> [Vec<u8>; 2] {
        self.partial.clone()
    }

    /// The fd numbers to pass across an exec, and the pipes' inodes for
    /// an agent that takes them back from the generation after a kill.
    pub fn handover(&self) -> OutputHandover {
        OutputHandover {
            fds: [self.reads[0].as_raw_fd(), self.reads[1].as_raw_fd()],
            inodes: self.inodes,
            partial: self.partial.clone(),
        }
    }

    /// The read ends the previous image passed across its exec.
    pub fn adopt_inherited(handed: &OutputHandover) -> std::io::Result<Captured> {
        let stdout = crate::sys::adopt_inherited_fd(handed.fds[0])?;
        let stderr = crate::sys::adopt_inherited_fd(handed.fds[1])?;
        let mut captured = Captured::adopted([stdout, stderr], handed.inodes)?;
        captured.partial = handed.partial.clone();
        Ok(captured)
    }

    /// The read ends a killed agent's generation still holds (its spare
    /// ones): copied out of one of `pids` with `pidfd_getfd`, each the pipe
    /// of the recorded inode, opened for reading.
    pub fn take_from(pids: &[i32], handed: &OutputHandover) -> std::io::Result<Captured> {
        let take = |inode: u64| {
            pids.iter()
                .find_map(|pid| take_read_end(*pid, inode))
                .ok_or_else(|| {
                    std::io::Error::other(format!(
                        "no process of the generation holds a read end of pipe {inode}"
                    ))
                })
        };
        let stdout = take(handed.inodes[0])?;
        let stderr = take(handed.inodes[1])?;
        Captured::adopted([stdout, stderr], handed.inodes)
    }

    fn adopted(reads: [OwnedFd; 2], inodes: [u64; 2]) -> std::io::Result<Captured> {
        for (read, expected) in reads.iter().zip(inodes) {
            let found = inode(read)?;
            if found != expected {
                return Err(std::io::Error::other(format!(
                    "fd {} is pipe {found}, not {expected}",
                    read.as_raw_fd()
                )));
            }
        }
        Ok(Captured {
            reads,
            inodes,
            stop: CancellationToken::new(),
            readers: Vec::new(),
            partial: Default::default(),
        })
    }
}

/// A copy of the read end of pipe `inode` that `pid` holds.
fn take_read_end(pid: i32, inode: u64) -> Option<OwnedFd> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
    let wanted = format!("pipe:[{inode}]");
    let candidates: Vec<RawFd> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == &*wanted)
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    let pidfd = rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
    candidates.into_iter().find_map(|fd| {
        let taken = rustix::process::pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).ok()?;
        let flags = nix::fcntl::fcntl(&taken, nix::fcntl::FcntlArg::F_GETFL).ok()?;
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY;
        (read_only && inode_matches(&taken, inode)).then_some(taken)
    })
}

fn inode_matches(fd: &OwnedFd, expected: u64) -> bool {
    inode(fd).is_ok_and(|found| found == expected)
}

/// Reads one pipe until every writer is gone or it is told to stop,
/// handing each complete line on as it comes, `begun` the start of the
/// first. Stopped, it gives back the start of a line it read.
async fn read_lines(
    fd: OwnedFd,
    stream: OutputStream,
    generation: u64,
    begun: Vec<u8>,
    output: Arc<ServiceOutput>,
    stop: CancellationToken,
) -> Vec<u8> {
    let begun = read_pipe(fd, stream, generation, begun, &output, &stop).await;
    output.reader_ended(generation);
    begun
}

async fn read_pipe(
    fd: OwnedFd,
    stream: OutputStream,
    generation: u64,
    begun: Vec<u8>,
    output: &Arc<ServiceOutput>,
    stop: &CancellationToken,
) -> Vec<u8> {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::warn!(service = %output.name, generation, error = %e, "cannot read the generation's output");
            return begun;
        }
    };
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut texts = Vec::new();
    splitter.push(&begun, &mut texts);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return splitter.take_partial(),
            ready = pipe.readable() => if ready.is_err() { break },
        }
        match pipe.try_read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                splitter.push(&buffer[..n], &mut texts);
                if !texts.is_empty() {
                    output.append(generation, stream, std::mem::take(&mut texts));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(service = %output.name, generation, error = %e, "reading the generation's output failed");
                break;
            }
        }
    }
    // A line the generation did not end before it exited is kept as it is.
    if let Some(rest) = splitter.finish() {
        output.append(generation, stream, vec![rest]);
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    async fn lines_of(output: &ServiceOutput, generation: u64, want: usize) -> Vec<String> {
        for _ in 0..200 {
            let lines = output.last(Some(generation), 100);
            if lines.len() >= want {
                return lines.into_iter().map(|l| l.text).collect();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {want} lines: {:?}",
            output.last(Some(generation), 100)
        );
    }

    /// An upgrade stops the readers between two writes of one line: the
    /// half read goes with the read end, and the line arrives whole.
    #[tokio::test]
    async fn a_reader_stopped_mid_line_hands_the_half_it_read_to_the_next() {
        let outputs = crate::output::Outputs::new(None);
        let output = outputs.service("web");
        let (mut captured, ends) = pipes().unwrap();
        let mut stdout = std::fs::File::from(ends.stdout);
        captured.start(&output, 1);
        stdout.write_all(b"first\nsecond ha").unwrap();
        assert_eq!(lines_of(&output, 1, 1).await, ["first"]);
        // Give the reader time to take the half line out of the pipe.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        captured.pause().await;
        assert_eq!(captured.handover().partial[0], b"second ha");
        let handed = captured.handover();
        drop(captured);

        // The next image's reader, on the same pipe.
        let fds = [
            nix::unistd::dup(&ends.spare_reads[0]).unwrap(),
            nix::unistd::dup(&ends.spare_reads[1]).unwrap(),
        ];
        let mut next = Captured::adopted(fds, handed.inodes).unwrap();
        next.partial = handed.partial.clone();
        next.start(&output, 1);
        stdout.write_all(b"lf\n").unwrap();
        assert_eq!(lines_of(&output, 1, 2).await, ["first", "second half"]);
    }
}
