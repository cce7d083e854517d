//! Where lines go: stdout or `--output FILE` (appended). Lines are flushed after every
//! batch of events, so none waits in a buffer while observer idles, and the file is
//! fsync'd when observer stops. A file never ends in a partial line: when a write fails
//! (a full disk), the file is cut back to the last whole line before the error is
//! returned.
use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Whole lines are handed to the writer in batches of about this size.
const BATCH_BYTES: usize = 64 * 1024;

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
        let result = self
            .writer
            .write_all(&self.pending)
            .and_then(|()| self.writer.flush());
        match (&result, &mut self.file) {
            (Ok(()), Some(file)) => file.whole_lines_len += self.pending.len() as u64,
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
