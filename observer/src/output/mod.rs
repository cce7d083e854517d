//! Lines as they leave observer: the human format, NDJSON, metrics, and the sink they
//! are written to.
pub mod human;
pub mod human_report;
pub mod metrics;
pub mod sink;
pub mod style;

use anyhow::Result;

use self::{sink::Sink, style::HumanFormat};
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
}

impl Output {
    pub fn write(&mut self, line: &Line) -> Result<()> {
        let text = match &self.format {
            OutputFormat::Json => line.to_json(),
            OutputFormat::Human(human) => human.render(line),
        };
        self.sink.write_line(&text)
    }

    pub fn write_all(&mut self, lines: &[Line]) -> Result<()> {
        lines.iter().try_for_each(|line| self.write(line))
    }
}
