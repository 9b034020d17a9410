//! Container output: fifos the shim writes a container's stdout and stderr
//! to, read here and written to the container's log file in the kubelet's
//! CRI format — `<RFC 3339 nanos> <stdout|stderr> <F|P> <text>`, one entry
//! per line, a line longer than [`MAX_LINE`] split into partial (`P`)
//! entries — as `kubectl logs` and `crictl logs` read it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_errdefs::{Error, Result};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// The longest entry before a line is split (containerd's default).
pub const MAX_LINE: usize = 16 * 1024;
/// After the container has exited, output still in the fifos is read until
/// they stay empty this long.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// Makes a fifo at `path` (mode 0600) unless one is there.
pub fn make_fifo(path: &Path) -> Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(Error::internal(format!("mkfifo {}: {e}", path.display()))),
    }
}

/// Opens the reading end of a fifo without waiting for a writer. It is
/// opened read-write, so it never reads end-of-file while the shim has not
/// opened it yet or has reopened it: the reader stops when told.
pub fn open_reader(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), &e))
}

/// A container's log file, reopened on request (log rotation).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl LogFile {
    pub fn open(path: &Path) -> Result<Arc<LogFile>> {
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(open_log(path)?),
        }))
    }

    /// Opens the file at its path again (the old one was moved away).
    pub fn reopen(&self) -> Result<()> {
        let fresh = open_log(&self.path)?;
        let mut file = self
            .file
            .lock()
            .map_err(|_| Error::internal("log file lock poisoned"))?;
        *file = fresh;
        Ok(())
    }

    fn write_entry(&self, stream: &str, partial: bool, text: &[u8]) {
        let stamp = berth_metadata::format_rfc3339_nanos(SystemTime::now());
        let mut entry = Vec::with_capacity(text.len() + 48);
        entry.extend_from_slice(stamp.as_bytes());
        entry.push(b' ');
        entry.extend_from_slice(stream.as_bytes());
        entry.extend_from_slice(if partial { b" P " } else { b" F " });
        entry.extend_from_slice(text);
        entry.push(b'\n');
        if let Ok(mut file) = self.file.lock() {
            if let Err(e) = file.write_all(&entry) {
                tracing::warn!(path = %self.path.display(), "writing the log: {e}");
            }
        }
    }
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| Error::io(format!("opening the log {}", path.display()), &e))
}

/// Splits a stream into CRI log entries.
#[derive(Debug, Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Feeds bytes; calls `emit(partial, text)` for each entry complete.
    fn feed(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(bool, &[u8])) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let take = bytes.len().min(room);
            match bytes[..take].iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.pending.extend_from_slice(&bytes[..newline]);
                    emit(false, &self.pending);
                    self.pending.clear();
                    bytes = &bytes[newline + 1..];
                }
                None => {
                    self.pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.pending.len() == MAX_LINE {
                        emit(true, &self.pending);
                        self.pending.clear();
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream: a last line without newline.
    fn finish(&mut self, emit: &mut dyn FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(false, &self.pending);
            self.pending.clear();
        }
    }
}

/// Output chunks as attached clients get them: (from stderr, bytes).
pub type Output = tokio::sync::broadcast::Sender<(bool, Vec<u8>)>;

/// A process's output fifo, read as it comes until the process has exited
/// (`exited` turns true) and then until it stays empty for a moment: the
/// fifo is open read-write, so it never reads end-of-file on its own.
#[derive(Debug)]
pub struct Follower {
    reader: pipe::Receiver,
    exited: watch::Receiver<bool>,
    buf: Vec<u8>,
}

impl Follower {
    pub fn new(reader: pipe::Receiver, exited: watch::Receiver<bool>) -> Follower {
        Follower {
            reader,
            exited,
            buf: vec![0u8; 32 * 1024],
        }
    }

    /// The next chunk, or None once the output is over.
    pub async fn next(&mut self) -> Option<&[u8]> {
        loop {
            let done = *self.exited.borrow();
            let read = if done {
                match tokio::time::timeout(DRAIN_QUIET, self.reader.read(&mut self.buf)).await {
                    Ok(read) => read,
                    Err(_) => return None,
                }
            } else {
                tokio::select! {
                    read = self.reader.read(&mut self.buf) => read,
                    _ = self.exited.changed() => continue,
                }
            };
            return match read {
                Ok(0) => None,
                Ok(n) => Some(&self.buf[..n]),
                Err(e) => {
                    tracing::warn!("reading a process's output: {e}");
                    None
                }
            };
        }
    }
}

/// Copies one stream's fifo into the log, and to whoever is attached.
pub async fn copy_stream(
    mut output: Follower,
    stream: &'static str,
    log: Arc<LogFile>,
    attached: Output,
) {
    let mut lines = Lines::default();
    let mut emit = |partial: bool, text: &[u8]| log.write_entry(stream, partial, text);
    while let Some(chunk) = output.next().await {
        if attached.receiver_count() > 0 {
            let _ = attached.send((stream == "stderr", chunk.to_vec()));
        }
        lines.feed(chunk, &mut emit)
    }
    lines.finish(&mut emit);
}

/// Reads an output into memory, keeping at most `limit` bytes and
/// discarding the rest (ExecSync's bound).
pub async fn collect(mut output: Follower, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while let Some(chunk) = output.next().await {
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let mut emit = |partial: bool, text: &[u8]| out.push((partial, text.to_vec()));
        for chunk in chunks {
            lines.feed(chunk, &mut emit);
        }
        lines.finish(&mut emit);
        out
    }

    #[test]
    fn lines_are_full_entries_across_chunks() {
        assert_eq!(
            entries(&[b"hel", b"lo\nwor", b"ld\n\nlast"]),
            vec![
                (false, b"hello".to_vec()),
                (false, b"world".to_vec()),
                (false, b"".to_vec()),
                (false, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut input = long.clone();
        input.push(b'\n');
        let out = entries(&[&input]);
        assert_eq!(out.len(), 3);
        assert!(out[0].0 && out[1].0 && !out[2].0);
        assert_eq!(out[0].1.len(), MAX_LINE);
        assert_eq!(out[2].1.len(), 5);
        let joined: Vec<u8> = out.iter().flat_map(|(_, t)| t.clone()).collect();
        assert_eq!(joined, long);
    }

    #[test]
    fn entries_are_in_the_kubelet_format() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("pod/c.log");
        let log = LogFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        log.write_entry("stdout", false, b"hello world");
        log.write_entry("stderr", true, b"part");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let fields: Vec<&str> = lines[0].splitn(4, ' ').collect();
        assert!(
            berth_metadata::parse_rfc3339(fields[0]).is_ok(),
            "{}",
            fields[0]
        );
        assert_eq!(&fields[1..], &["stdout", "F", "hello world"]);
        assert!(lines[1].ends_with(" stderr P part"));
        // Rotation: the old file moved away, the next entry in a new one.
        std::fs::rename(&path, dir.path().join("old.log")).unwrap_or_else(|e| panic!("{e}"));
        log.reopen().unwrap_or_else(|e| panic!("{e}"));
        log.write_entry("stdout", false, b"after");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.ends_with(" stdout F after\n"));
    }
}
