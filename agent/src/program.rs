//! What a generation runs: its executable after the PATH lookup, symlinks
//! resolved, the script an interpreter runs, and each file's identity (its
//! ELF build id, else the SHA-256 of its content).
//!
//! A build id costs a few small reads. A hash costs the whole file, so it is
//! remembered by (device, inode, size, modification time) and a big file is
//! hashed only off the restart's path: a spawn takes what is known at once
//! ([`identify_now`]) and the rest comes later ([`identify`], on a blocking
//! thread).

use crate::config::ServiceConfig;
use baton_proto::Program;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A file up to this size is hashed on the spot: a script, a small binary.
pub const HASH_AT_ONCE_BYTES: u64 = 4 << 20;

/// Identities remembered; past this the cache starts again empty.
const CACHE_ENTRIES: usize = 1024;

/// The program headers read at most, and one note segment at most: a
/// build id is in the first notes of any real binary.
const MAX_PROGRAM_HEADERS: usize = 256;
const MAX_NOTE_BYTES: u64 = 64 << 10;

/// The files a service's command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub executable: PathBuf,
    pub script: Option<PathBuf>,
}

/// What stands for a file's content in the cache: a new build put in place
/// (a new file, or the same one rewritten) changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileKey {
    pub fn of(path: &Path) -> io::Result<FileKey> {
        let meta = std::fs::metadata(path)?;
        Ok(FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        })
    }
}

/// The files `config`'s command runs now: the program found as a spawn
/// finds it, and the script rule of [`Program::script`], symlinks resolved.
pub fn locate(config: &ServiceConfig) -> Result<Files, crate::spawn::LaunchError> {
    let found = crate::spawn::find_program(config)?;
    let in_workdir = |path: &Path| match (&config.workdir, path.is_relative()) {
        (Some(dir), true) => dir.join(path),
        _ => path.to_path_buf(),
    };
    let executable = in_workdir(&found);
    let executable = std::fs::canonicalize(&executable).unwrap_or(executable);
    let script = config
        .command
        .iter()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .map(|arg| in_workdir(Path::new(arg)))
        .filter(|path| path.is_file())
        .map(|path| std::fs::canonicalize(&path).unwrap_or(path));
    Ok(Files { executable, script })
}

fn cache() -> &'static Mutex<HashMap<FileKey, String>> {
    static CACHE: OnceLock<Mutex<HashMap<FileKey, String>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn cached(key: &FileKey) -> Option<String> {
    cache().lock().expect("identity cache").get(key).cloned()
}

fn remember(key: FileKey, id: &str) {
    let mut cache = cache().lock().expect("identity cache");
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, id.to_string());
}

/// A file's identity if it costs little: remembered, a build id, or a small
/// file's hash. `None` for a big file without a build id not hashed yet.
pub fn identify_now(path: &Path) -> io::Result<Option<String>> {
    identify_within(path, HASH_AT_ONCE_BYTES)
}

/// A file's identity, whatever it costs. Blocking.
pub fn identify(path: &Path) -> io::Result<String> {
    identify_within(path, u64::MAX).map(|id| id.expect("no bound on the hash"))
}

fn identify_within(path: &Path, hash_bound: u64) -> io::Result<Option<String>> {
    let key = FileKey::of(path)?;
    if let Some(id) = cached(&key) {
        return Ok(Some(id));
    }
    let mut file = File::open(path)?;
    // A malformed ELF file is still a file: its content identifies it.
    if let Ok(Some(build_id)) = read_build_id(&mut file) {
        let id = format!("build-id:{}", hex::encode(build_id));
        remember(key, &id);
        return Ok(Some(id));
    }
    if key.size > hash_bound {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let id = format!("sha256:{}", hex::encode(hasher.finalize()));
    // Keyed by what was seen before reading: a file rewritten meanwhile has
    // another key, and is read again next time.
    remember(key, &id);
    Ok(Some(id))
}

/// What the files are, as far as it costs little; the version is the
/// configured one (`version_env`).
pub fn describe_now(files: &Files, config: &ServiceConfig) -> Program {
    let id = |path: &Path| identify_now(path).ok().flatten();
    Program {
        executable: files.executable.display().to_string(),
        executable_id: id(&files.executable),
        script: files.script.as_ref().map(|p| p.display().to_string()),
        script_id: files.script.as_deref().and_then(id),
        version: configured_version(config),
    }
}

/// Fills in the identities [`describe_now`] left out. Blocking.
pub fn complete(program: &mut Program, files: &Files) {
    if program.executable_id.is_none() {
        program.executable_id = identify(&files.executable).ok();
    }
    if let Some(script) = &files.script
        && program.script_id.is_none()
    {
        program.script_id = identify(script).ok();
    }
}

/// The version the config declares: the value of the variable
/// `version_env` names in the service's `env`.
pub fn configured_version(config: &ServiceConfig) -> Option<String> {
    let name = config.version_env.as_ref()?;
    config.env.get(name).cloned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("the ELF file ends before its {0}")]
    Truncated(&'static str),
    #[error("the ELF header is invalid: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(#[from] IoKind),
}

/// An I/O error reduced to its kind, so [`ElfError`] compares in tests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("reading failed: {0}")]
pub struct IoKind(io::ErrorKind);

impl From<io::Error> for ElfError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ElfError::Truncated("end")
        } else {
            ElfError::Io(IoKind(e.kind()))
        }
    }
}

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The GNU build id of an ELF file (`.note.gnu.build-id`), found through
/// its program headers (the notes a loaded binary keeps, whether or not its
/// section headers were stripped). `Ok(None)`: not an ELF file, or one
/// without a build id. Every size read from the file is bounded before it
/// is used.
pub fn read_build_id(file: &mut (impl Read + Seek)) -> Result<Option<Vec<u8>>, ElfError> {
    file.seek(SeekFrom::Start(0))?;
    let mut ident = [0u8; 16];
    match file.read_exact(&mut ident) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Invalid("class")),
    };
    let little = match ident[5] {
        1 => true,
        2 => false,
        _ => return Err(ElfError::Invalid("byte order")),
    };
    let endian = Endian(little);
    let mut header = [0u8; 48];
    let header = &mut header[..if wide { 48 } else { 36 }];
    file.read_exact(header)
        .map_err(|_| ElfError::Truncated("header"))?;
    // Offsets below are from the start of the file, minus the 16 read.
    let (phoff, phentsize, phnum) = if wide {
        (
            endian.u64(&header[0x20 - 16..]),
            endian.u16(&header[0x36 - 16..]) as usize,
            endian.u16(&header[0x38 - 16..]) as usize,
        )
    } else {
        (
            endian.u32(&header[0x1c - 16..]) as u64,
            endian.u16(&header[0x2a - 16..]) as usize,
            endian.u16(&header[0x2c - 16..]) as usize,
        )
    };
    let min_entry = if wide { 56 } else { 32 };
    if phnum == 0 {
        return Ok(None);
    }
    if !(min_entry..=256).contains(&phentsize) || phnum > MAX_PROGRAM_HEADERS {
        return Err(ElfError::Invalid("program header table"));
    }
    let mut table = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut table)
        .map_err(|_| ElfError::Truncated("program headers"))?;
    for entry in table.chunks_exact(phentsize) {
        if endian.u32(entry) != PT_NOTE {
            continue;
        }
        let (offset, size, align) = if wide {
            (
                endian.u64(&entry[8..]),
                endian.u64(&entry[0x20..]),
                endian.u64(&entry[0x30..]),
            )
        } else {
            (
                endian.u32(&entry[4..]) as u64,
                endian.u32(&entry[0x10..]) as u64,
                endian.u32(&entry[0x1c..]) as u64,
            )
        };
        let mut notes = vec![0u8; size.min(MAX_NOTE_BYTES) as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut notes)
            .map_err(|_| ElfError::Truncated("notes"))?;
        if let Some(id) = find_build_id(&notes, endian, if align == 8 { 8 } else { 4 })? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

fn find_build_id(
    mut notes: &[u8],
    endian: Endian,
    align: usize,
) -> Result<Option<Vec<u8>>, ElfError> {
    let padded = |n: usize| n.div_ceil(align) * align;
    while notes.len() >= 12 {
        let name_size = endian.u32(notes) as usize;
        let desc_size = endian.u32(&notes[4..]) as usize;
        let kind = endian.u32(&notes[8..]);
        let name_end = 12usize.saturating_add(padded(name_size));
        let desc_end = name_end.saturating_add(padded(desc_size));
        if name_end > notes.len() || name_end.saturating_add(desc_size) > notes.len() {
            return Err(ElfError::Truncated("note"));
        }
        if kind == NT_GNU_BUILD_ID && notes[12..12 + name_size] == *b"GNU\0" {
            if desc_size == 0 || desc_size > 64 {
                return Err(ElfError::Invalid("build id length"));
            }
            return Ok(Some(notes[name_end..name_end + desc_size].to_vec()));
        }
        notes = notes.get(desc_end..).unwrap_or_default();
    }
    Ok(None)
}

#[derive(Debug, Clone, Copy)]
struct Endian(bool);

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.0 {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.0 {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }
    fn u64(self, b: &[u8]) -> u64 {
        let b: [u8; 8] = b[..8].try_into().expect("eight bytes");
        if self.0 {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn this_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn a_real_binary_has_the_build_id_readelf_reads() {
        let bytes = this_binary();
        let id = read_build_id(&mut Cursor::new(&bytes))
            .unwrap()
            .expect("a build id");
        assert!((8..=64).contains(&id.len()), "{id:?}");
        // The same bytes are in the file, after the note's "GNU\0" name.
        let mut needle = b"GNU\0".to_vec();
        needle.extend(&id);
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        let path = std::env::current_exe().unwrap();
        assert_eq!(
            identify(&path).unwrap(),
            format!("build-id:{}", hex::encode(&id))
        );
    }

    #[test]
    fn a_file_that_is_not_elf_is_identified_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("app.py");
        std::fs::write(&script, "print('1.4.3')\n").unwrap();
        assert_eq!(read_build_id(&mut File::open(&script).unwrap()), Ok(None));
        let id = identify(&script).unwrap();
        assert_eq!(
            id,
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"print('1.4.3')\n"))
            )
        );
        // A new build in place has a new identity, although the path is the same.
        std::fs::write(&script, "print('1.4.4')\n").unwrap();
        assert_ne!(identify(&script).unwrap(), id);
    }

    #[test]
    fn a_truncated_or_garbled_elf_file_is_an_error_not_a_panic() {
        let bytes = this_binary();
        // Every cut of the headers, and cuts inside the notes.
        for len in (0..4096).chain((4096..bytes.len().min(1 << 16)).step_by(509)) {
            let _ = read_build_id(&mut Cursor::new(&bytes[..len]));
        }
        assert!(read_build_id(&mut Cursor::new(&bytes[..40])).is_err());
        assert!(read_build_id(&mut Cursor::new(&bytes[..200])).is_err());
        // Random bytes after the magic, many times over.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut garbage = b"\x7fELF".to_vec();
            for _ in 0..600 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                garbage.push(seed as u8);
            }
            garbage[4] = 1 + (seed % 2) as u8;
            garbage[5] = 1 + ((seed >> 8) % 2) as u8;
            let _ = read_build_id(&mut Cursor::new(&garbage));
        }
        let mut bad_class = bytes[..64].to_vec();
        bad_class[4] = 9;
        assert_eq!(
            read_build_id(&mut Cursor::new(&bad_class)),
            Err(ElfError::Invalid("class"))
        );
        // A malformed ELF file is still identified, by its content.
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &bytes[..200]).unwrap();
        assert!(identify(&cut).unwrap().starts_with("sha256:"));
    }

    #[test]
    fn a_big_file_without_a_build_id_is_not_hashed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; HASH_AT_ONCE_BYTES as usize + 1]).unwrap();
        assert_eq!(identify_now(&big).unwrap(), None);
        let id = identify(&big).unwrap();
        // Once hashed, it is remembered.
        assert_eq!(identify_now(&big).unwrap(), Some(id));
    }
}
