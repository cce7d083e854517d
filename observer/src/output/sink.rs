//! Where lines go: stdout or `--output FILE` (appended). Lines are flushed after every
//! batch of events, so none waits in a buffer while observer idles, and the file is
//! fsync'd when observer stops. A file never ends in a partial line: when a write fails
//! (a full disk), the file is cut back to the last whole line before the error is
//! returned.
//!
//! logrotate's `copytruncate` copies the file and then truncates it; whatever observer
//! appended between the two would be lost. So a truncation is noticed before the next
//! write, and the lines written after the point where the copy ended (the newest
//! rotated file's length) are written again at the start of the truncated file, from
//! the last batches kept in memory.
use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Whole lines are handed to the writer in batches of about this size.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes of the latest batches kept to write again after a copytruncate.
const KEPT_BYTES: usize = 4 * 1024 * 1024;

pub struct Sink {
    writer: Box<dyn Write>,
    /// Whole lines not yet written.
    pending: Vec<u8>,
    file: Option<OutputFile>,
    /// The reader went away (`observer watch | head`): stop writing, quietly.
    closed: bool,
}

struct OutputFile {
    /// A second handle for fsync and truncation.
    handle: File,
    path: PathBuf,
    /// Its length up to the last line written whole.
    whole_lines_len: u64,
    /// The latest batches written, with the offset each began at.
    recent: VecDeque<(u64, Vec<u8>)>,
    recent_bytes: usize,
}

impl OutputFile {
    fn remember(&mut self, start: u64, batch: &[u8]) {
        self.recent.push_back((start, batch.to_vec()));
        self.recent_bytes += batch.len();
        while self.recent_bytes > KEPT_BYTES
            && let Some((_, old)) = self.recent.pop_front()
        {
            self.recent_bytes -= old.len();
        }
    }

    /// If the file is shorter than what was written to it, someone truncated it (a
    /// copytruncate): the bytes written after the copy's end, which the truncation
    /// took, to be written again; an error names what could not be recovered.
    fn truncated_tail(&mut self) -> Result<Option<Vec<u8>>, String> {
        let len = self.handle.metadata().map_err(|e| e.to_string())?.len();
        if len >= self.whole_lines_len {
            return Ok(None);
        }
        let written = std::mem::replace(&mut self.whole_lines_len, len);
        let copied = newest_copy_len(&self.path).ok_or_else(|| {
            format!(
                "{} was truncated by another process, and no uncompressed copy was found                  beside it: lines written just before may be lost",
                self.path.display()
            )
        })?;
        let oldest = self.recent.front().map_or(written, |(start, _)| *start);
        if copied > written || copied < oldest {
            return Err(format!(
                "{} was truncated after a copy of {copied} bytes, outside the {oldest}..{written}                  observer still holds: lines may be lost",
                self.path.display()
            ));
        }
        let mut tail = Vec::new();
        for (start, batch) in &self.recent {
            let end = start + batch.len() as u64;
            if end > copied {
                let from = copied.saturating_sub(*start) as usize;
                tail.extend_from_slice(&batch[from..]);
            }
        }
        self.recent.clear();
        self.recent_bytes = 0;
        Ok(Some(tail))
    }
}

/// The length of the newest rotated copy of `path` beside it (`FILE.1`, `FILE-20261201`
/// …), unless it is compressed.
fn newest_copy_len(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(name) && n != name)
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max_by_key(|(modified, _)| *modified)?
        .1;
    let mut magic = [0u8; 4];
    let mut file = File::open(&newest).ok()?;
    let read = std::io::Read::read(&mut file, &mut magic).ok()?;
    let compressed = read >= 2 && (magic[..2] == [0x1f, 0x8b] || magic[..2] == [0xfd, b'7'])
        || magic[..3] == *b"BZh"
        || magic == [0x28, 0xb5, 0x2f, 0xfd];
    (!compressed)
        .then(|| file.metadata().ok().map(|m| m.len()))
        .flatten()
}

impl Sink {
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()), None)
    }

    /// Writes nothing (when only the reports are wanted, in memory).
    pub fn discard() -> Self {
        Self::new(Box::new(io::sink()), None)
    }

    fn new(writer: Box<dyn Write>, file: Option<OutputFile>) -> Self {
        Self {
            writer,
            pending: Vec::with_capacity(BATCH_BYTES),
            file,
            closed: false,
        }
    }

    /// Appends to `path`, created readable by its owner and group only (events name
    /// processes and connections).
    pub fn file(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .with_context(|| format!("cannot open --output {}", path.display()))?;
        let handle = file.try_clone()?;
        let whole_lines_len = handle.metadata()?.len();
        let output = OutputFile {
            handle,
            path: path.to_path_buf(),
            whole_lines_len,
            recent: VecDeque::new(),
            recent_bytes: 0,
        };
        Ok(Self::new(Box::new(file), Some(output)))
    }

    /// Reopens the output file at its path (after logrotate moved it away); nothing for
    /// other outputs.
    pub fn reopen(&mut self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let path = file.path.clone();
        self.flush()?;
        *self = Self::file(&path)?;
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn describe(&self) -> String {
        match &self.file {
            Some(file) => file.path.display().to_string(),
            None => "standard output".to_string(),
        }
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        if self.pending.len() >= BATCH_BYTES {
            return self.flush();
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.closed || self.pending.is_empty() {
            return Ok(());
        }
        if let Some(file) = &mut self.file {
            match file.truncated_tail() {
                Ok(Some(mut tail)) => {
                    tail.append(&mut self.pending);
                    self.pending = tail;
                }
                Ok(None) => {}
                Err(warning) => eprintln!("observer: warning: {warning}"),
            }
        }
        let result = self
            .writer
            .write_all(&self.pending)
            .and_then(|()| self.writer.flush());
        match (&result, &mut self.file) {
            (Ok(()), Some(file)) => {
                // Where the batch really landed (O_APPEND writes at the end, which a
                // truncation just before may have moved): the offset the two handles
                // share now ends it.
                let end = file
                    .handle
                    .stream_position()
                    .unwrap_or(file.whole_lines_len + self.pending.len() as u64);
                file.remember(end - self.pending.len() as u64, &self.pending);
                file.whole_lines_len = end;
            }
            // Part of the batch may be on disk: cut the file back to its last whole line.
            (Err(_), Some(file)) => {
                let _ = file.handle.set_len(file.whole_lines_len);
            }
            _ => {}
        }
        let lines = self.pending.iter().filter(|&&b| b == b'\n').count();
        self.pending.clear();
        self.check(result)
            .with_context(|| format!("{lines} lines not written"))
    }

    /// Flushes and, for a file, fsyncs.
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(file) = &self.file {
            file.handle
                .sync_all()
                .with_context(|| format!("fsync of {} failed", file.path.display()))?;
        }
        Ok(())
    }

    fn check(&mut self, result: io::Result<()>) -> Result<()> {
        match result {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other.with_context(|| format!("writing events to {} failed", self.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// copytruncate: the copy got the first batch; the second was appended before the
    /// truncation took it; the third comes after. Every line ends in exactly one file.
    #[test]
    fn lines_a_copytruncate_took_are_written_again() {
        let dir = std::env::temp_dir().join(format!("observer-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.ndjson");
        let mut sink = Sink::file(&path).unwrap();
        sink.write_line("one").unwrap();
        sink.flush().unwrap();
        let copy_then = |between: &mut dyn FnMut()| {
            std::fs::copy(&path, dir.join("events.ndjson.1")).unwrap();
            between();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
        };
        copy_then(&mut || {
            sink.write_line("two").unwrap();
            sink.flush().unwrap();
        });
        sink.write_line("three").unwrap();
        sink.finish().unwrap();
        let copy = std::fs::read_to_string(dir.join("events.ndjson.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!((copy.as_str(), current.as_str()), ("one\n", "two\nthree\n"));
        // Truncated again just before a write: nothing is written twice.
        copy_then(&mut || {});
        sink.write_line("four").unwrap();
        sink.flush().unwrap();
        sink.write_line("five").unwrap();
        sink.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "four\nfive\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
