//! Lines as they leave observer: the human format, NDJSON, metrics, and the sink they
//! are written to.
pub mod fold;
pub mod human;
pub mod human_report;
pub mod metrics;
pub mod sink;
pub mod style;

use anyhow::Result;

use self::{
    fold::{Fold, Folding},
    sink::Sink,
    style::HumanFormat,
};
use crate::event::Line;

pub enum OutputFormat {
    Json,
    Human(HumanFormat),
}

impl OutputFormat {
    /// JSON, or the human format: coloured or not as `color` says, or when it does not
    /// say, when the lines go to a terminal on stdout and NO_COLOR is unset.
    pub fn choose(json: bool, color: Option<bool>, to_file: bool) -> Self {
        if json {
            return OutputFormat::Json;
        }
        let color = color.unwrap_or_else(|| {
            !to_file
                && std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none()
        });
        OutputFormat::Human(HumanFormat { color })
    }
}

/// A format and a sink.
pub struct Output {
    pub format: OutputFormat,
    pub sink: Sink,
    /// The human format's folding of a process's many connections (None: every line).
    folding: Option<Folding>,
}

impl Output {
    pub fn new(format: OutputFormat, sink: Sink) -> Self {
        let folding = matches!(format, OutputFormat::Human(_)).then(Folding::default);
        Self {
            format,
            sink,
            folding,
        }
    }

    /// Every connection closed at exit and every RST its own line in the human format
    /// too (`--connections each`).
    pub fn show_every_connection(&mut self) {
        self.folding = None;
    }

    pub fn write(&mut self, line: &Line) -> Result<()> {
        let text = match &self.format {
            OutputFormat::Json => line.to_json(),
            OutputFormat::Human(human) => match self.folding.as_mut().map(|f| f.fold(line)) {
                None | Some(Fold::Show) => human.render(line),
                Some(Fold::Note(note)) => human.render_note(line, &note),
                Some(Fold::Hide) => return Ok(()),
            },
        };
        self.sink.write_line(&text)
    }

    pub fn write_all(&mut self, lines: &[Line]) -> Result<()> {
        lines.iter().try_for_each(|line| self.write(line))
    }
}
