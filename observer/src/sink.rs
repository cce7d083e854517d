//! Where lines go: stdout or `--output FILE` (appended). Lines are flushed after every
//! batch of events, so none waits in a buffer while observer idles, and the file is
//! fsync'd when observer stops.
use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

pub struct Sink {
    writer: BufWriter<Box<dyn Write>>,
    file: Option<(File, PathBuf)>,
    /// The reader went away (`observer watch | head`): stop writing, quietly.
    closed: bool,
}

impl Sink {
    pub fn stdout() -> Self {
        Self {
            writer: BufWriter::with_capacity(64 * 1024, Box::new(io::stdout())),
            file: None,
            closed: false,
        }
    }

    /// Writes nothing (when only the reports are wanted, in memory).
    pub fn discard() -> Self {
        Self {
            writer: BufWriter::new(Box::new(io::sink())),
            file: None,
            closed: false,
        }
    }

    pub fn file(path: &Path) -> Result<Self> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        };
        let file = open().with_context(|| format!("cannot open --output {}", path.display()))?;
        let sync_handle = file.try_clone()?;
        Ok(Self {
            writer: BufWriter::with_capacity(64 * 1024, Box::new(file)),
            file: Some((sync_handle, path.to_path_buf())),
            closed: false,
        })
    }

    /// Reopens the output file at its path (after logrotate moved it away); nothing for
    /// other outputs.
    pub fn reopen(&mut self) -> Result<()> {
        let Some((_, path)) = &self.file else {
            return Ok(());
        };
        let path = path.clone();
        self.writer
            .flush()
            .with_context(|| format!("flushing {}", path.display()))?;
        *self = Self::file(&path)?;
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn describe(&self) -> String {
        match &self.file {
            Some((_, path)) => path.display().to_string(),
            None => "standard output".to_string(),
        }
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"));
        self.check(result)
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.writer.flush();
        self.check(result)
    }

    /// Flushes and, for a file, fsyncs.
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        if let Some((file, path)) = &self.file {
            file.sync_all()
                .with_context(|| format!("fsync of {} failed", path.display()))?;
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
