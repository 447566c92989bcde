//! Each service's output in files, `NAME.log` then `NAME.log.1`, ... by
//! size: one writer thread for the agent, fed through a bounded queue.
//!
//! Nothing here may hold up a service: the readers only offer lines to the
//! queue, and a queue that is full (a disk slower than the services) drops
//! them, counted. A folder that cannot be written (missing, full, read-only)
//! leaves the files behind while the in-memory tails go on; the failure is
//! logged at most once a second and the file tried again then.

use baton_proto::OutputLine;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Batches (one read of a pipe each, at most 64 KiB) the queue holds.
const QUEUE_BATCHES: usize = 128;
const COMPLAIN_EVERY: Duration = Duration::from_secs(1);

/// Where and how much the files keep (`[logs]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLimits {
    pub folder: PathBuf,
    /// A file is rotated before it grows past this.
    pub max_bytes: u64,
    /// Files kept per service, the one being written included.
    pub files: u32,
}

enum Job {
    Lines {
        service: Arc<str>,
        lines: Vec<OutputLine>,
    },
    Flush(std::sync::mpsc::Sender<()>),
}

/// The agent's end of the writer thread.
pub struct FileSink {
    queue: SyncSender<Job>,
    dropped: AtomicU64,
    last_complaint: std::sync::Mutex<Option<Instant>>,
}

impl FileSink {
    pub fn start(limits: FileLimits) -> Arc<FileSink> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE_BATCHES);
        std::thread::Builder::new()
            .name("output-files".into())
            .spawn(move || Writer::new(limits).run(jobs))
            .expect("a thread for the output files");
        Arc::new(FileSink {
            queue,
            dropped: AtomicU64::new(0),
            last_complaint: std::sync::Mutex::new(None),
        })
    }

    /// Offers lines to the files without ever waiting.
    pub fn offer(&self, service: &Arc<str>, lines: Vec<OutputLine>) {
        let count = lines.len() as u64;
        let job = Job::Lines {
            service: service.clone(),
            lines,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(count, Ordering::Relaxed) + count;
                let mut last = self
                    .last_complaint
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= COMPLAIN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        service = %service,
                        dropped_lines = dropped,
                        "output files fall behind; lines left out of the files (the tails have them)"
                    );
                }
            }
        }
    }

    /// Waits (at most `patience`) until every line offered so far is
    /// written: before the agent re-executes itself.
    pub fn flush(&self, patience: Duration) {
        let (done, finished) = std::sync::mpsc::channel();
        if self.queue.send(Job::Flush(done)).is_ok() {
            let _ = finished.recv_timeout(patience);
        }
    }
}

struct Writer {
    limits: FileLimits,
    files: HashMap<Arc<str>, Rotating>,
    last_complaint: Option<Instant>,
}

impl Writer {
    fn new(limits: FileLimits) -> Writer {
        Writer {
            limits,
            files: HashMap::new(),
            last_complaint: None,
        }
    }

    fn run(mut self, jobs: Receiver<Job>) {
        let mut text = Vec::with_capacity(64 * 1024);
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Flush(done) => {
                    let _ = done.send(());
                }
                Job::Lines { service, lines } => {
                    text.clear();
                    for line in &lines {
                        format_line(line, &mut text);
                    }
                    let file = self
                        .files
                        .entry(service.clone())
                        .or_insert_with(|| Rotating::new(&self.limits, &service));
                    if let Err(e) = file.write(&text)
                        && self
                            .last_complaint
                            .is_none_or(|at| at.elapsed() >= COMPLAIN_EVERY)
                    {
                        self.last_complaint = Some(Instant::now());
                        tracing::warn!(
                            service = %service,
                            file = %file.path.display(),
                            error = %e,
                            "could not write the service's output file; its tail in memory goes on"
                        );
                    }
                }
            }
        }
    }
}

/// `2026-12-03T21:33:25.123Z 7 out the text`
pub fn format_line(line: &OutputLine, out: &mut Vec<u8>) {
    let at = UNIX_EPOCH + Duration::from_millis(line.time);
    let _ = write!(
        out,
        "{} {} {} ",
        humantime::format_rfc3339_millis(at),
        line.generation,
        line.stream.as_str()
    );
    out.extend_from_slice(line.text.as_bytes());
    out.push(b'\n');
}

/// A line of a file back, for `baton logs` asking further back than the
/// tails reach.
pub fn parse_line(text: &str) -> Option<OutputLine> {
    let mut parts = text.splitn(4, ' ');
    let time = humantime::parse_rfc3339(parts.next()?).ok()?;
    let generation = parts.next()?.parse().ok()?;
    let stream = baton_proto::OutputStream::parse(parts.next()?)?;
    Some(OutputLine {
        time: time.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64,
        generation,
        stream,
        text: parts.next().unwrap_or("").to_string(),
    })
}

/// The file of a service, `index` 0 being the one written.
pub fn file_path(folder: &Path, service: &str, index: u32) -> PathBuf {
    if index == 0 {
        folder.join(format!("{service}.log"))
    } else {
        folder.join(format!("{service}.log.{index}"))
    }
}

struct Rotating {
    path: PathBuf,
    folder: PathBuf,
    service: Arc<str>,
    max_bytes: u64,
    files: u32,
    file: Option<File>,
    size: u64,
    /// After a failure, when the file may be tried again.
    retry_at: Option<Instant>,
}

impl Rotating {
    fn new(limits: &FileLimits, service: &Arc<str>) -> Rotating {
        Rotating {
            path: file_path(&limits.folder, service, 0),
            folder: limits.folder.clone(),
            service: service.clone(),
            max_bytes: limits.max_bytes,
            files: limits.files,
            file: None,
            size: 0,
            retry_at: None,
        }
    }

    fn write(&mut self, text: &[u8]) -> std::io::Result<()> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            // Counted as written nowhere: the tail has the lines.
            return Ok(());
        }
        let result = self.try_write(text);
        if result.is_err() {
            self.file = None;
            self.retry_at = Some(Instant::now() + COMPLAIN_EVERY);
        } else {
            self.retry_at = None;
        }
        result
    }

    fn try_write(&mut self, text: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size + text.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(text)?;
        self.size += text.len() as u64;
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.folder)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// `NAME.log.K` becomes `NAME.log.K+1` (the oldest is removed), the
    /// current file `NAME.log.1`, and a new `NAME.log` is started.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.files <= 1 {
            std::fs::remove_file(&self.path)?;
        } else {
            let oldest = file_path(&self.folder, &self.service, self.files - 1);
            match std::fs::remove_file(&oldest) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for index in (0..self.files - 1).rev() {
                let from = file_path(&self.folder, &self.service, index);
                let to = file_path(&self.folder, &self.service, index + 1);
                match std::fs::rename(&from, &to) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        self.open()
    }
}

/// The last `n` lines of a service's files, oldest first, read back from
/// the newest file to older ones until there are enough.
pub fn read_back(
    limits: &FileLimits,
    service: &str,
    generation: Option<u64>,
    n: usize,
) -> Vec<OutputLine> {
    let mut newest_first: Vec<OutputLine> = Vec::new();
    for index in 0..limits.files {
        if newest_first.len() >= n {
            break;
        }
        let Ok(text) = std::fs::read(file_path(&limits.folder, service, index)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        for line in text.lines().rev() {
            if newest_first.len() >= n {
                break;
            }
            if let Some(line) = parse_line(line)
                && generation.is_none_or(|g| g == line.generation)
            {
                newest_first.push(line);
            }
        }
    }
    newest_first.reverse();
    newest_first
}

/// When the agent read a line now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::OutputStream;

    fn line(generation: u64, text: &str) -> OutputLine {
        OutputLine {
            time: 1_764_797_605_123,
            generation,
            stream: OutputStream::Stderr,
            text: text.to_string(),
        }
    }

    #[test]
    fn a_line_written_to_a_file_reads_back_the_same() {
        let original = line(7, "listening on :8080 (two  spaces)");
        let mut text = Vec::new();
        format_line(&original, &mut text);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "2025-12-03T21:33:25.123Z 7 err listening on :8080 (two  spaces)\n"
        );
        assert_eq!(parse_line(text.trim_end()), Some(original));
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files_each_below_the_bound() {
        let folder = tempfile::tempdir().unwrap();
        let limits = FileLimits {
            folder: folder.path().join("logs"),
            max_bytes: 1_000,
            files: 3,
        };
        let service: Arc<str> = Arc::from("web");
        let mut writer = Writer::new(limits.clone());
        let (queue, jobs) = std::sync::mpsc::sync_channel(10_000);
        for i in 0..500 {
            let job = Job::Lines {
                service: service.clone(),
                lines: vec![line(1, &format!("line {i:04}"))],
            };
            queue.send(job).unwrap();
        }
        drop(queue);
        writer.files.clear();
        writer.run(jobs);
        let mut names: Vec<String> = std::fs::read_dir(&limits.folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["web.log", "web.log.1", "web.log.2"]);
        for name in &names {
            let size = std::fs::metadata(limits.folder.join(name)).unwrap().len();
            assert!(size <= 1_000, "{name} has {size} bytes");
        }
        // The newest lines are in the files, in order, across a rotation.
        let back = read_back(&limits, "web", None, 40);
        let texts: Vec<String> = back.iter().map(|l| l.text.clone()).collect();
        let expected: Vec<String> = (460..500).map(|i| format!("line {i:04}")).collect();
        assert_eq!(texts, expected);
    }

    #[test]
    fn an_unwritable_folder_never_stops_the_sink() {
        let folder = tempfile::tempdir().unwrap();
        let blocker = folder.path().join("not-a-folder");
        std::fs::write(&blocker, b"").unwrap();
        let sink = FileSink::start(FileLimits {
            folder: blocker.join("logs"),
            max_bytes: 1_000,
            files: 2,
        });
        let service: Arc<str> = Arc::from("web");
        let started = Instant::now();
        for _ in 0..10_000 {
            sink.offer(&service, vec![line(1, "x")]);
        }
        sink.flush(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
