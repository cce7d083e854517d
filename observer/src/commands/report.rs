//! `observer report FILE`: replays a saved `watch --json` log through the correlator and
//! prints its reports. Lines that are not events (garbled, truncated) are reported with
//! their line numbers and skipped.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
};

use anyhow::{Context, Result, bail};

use crate::{
    commands::cli::ReportArgs,
    output::{Output, OutputFormat, sink::Sink},
    pipeline::{correlate::Correlator, replay},
};

/// Problems shown individually before the rest are only counted.
const SHOWN_PROBLEMS: usize = 10;

pub fn run(args: &ReportArgs) -> Result<()> {
    let input: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        )
    };
    let mut output = Output::new(
        OutputFormat::choose(args.json, args.color.forced(), false),
        Sink::stdout(),
    );
    let mut correlator = Correlator::new(args.reports.config());
    let mut problems = 0usize;
    let mut events = 0usize;
    for (index, line) in BufReader::new(input).split(b'\n').enumerate() {
        let number = index + 1;
        let bytes = line.with_context(|| format!("reading {}", args.file.display()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match replay::parse(&bytes) {
            Ok(Some(line)) => {
                events += 1;
                output.write_all(&correlator.observe(&line))?;
            }
            Ok(None) => {}
            Err(problem) => {
                problems += 1;
                if problems <= SHOWN_PROBLEMS {
                    eprintln!("observer: {}:{number}: {problem}", args.file.display());
                }
            }
        }
        if output.sink.is_closed() {
            return Ok(());
        }
    }
    output.write_all(&correlator.finish())?;
    output.sink.finish()?;
    if problems > SHOWN_PROBLEMS {
        eprintln!(
            "observer: … {} more lines skipped",
            problems - SHOWN_PROBLEMS
        );
    }
    if events == 0 && problems == 0 {
        eprintln!("observer: {} holds no events", args.file.display());
    }
    if problems > 0 {
        bail!(
            "{problems} lines of {} were not events and were skipped",
            args.file.display()
        );
    }
    Ok(())
}
