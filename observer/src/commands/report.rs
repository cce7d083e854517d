//! `observer report FILE`: replays a saved `watch --json` log through the correlator and
//! prints its reports. Lines that are not events (garbled, truncated, or of a type this
//! version does not know) are reported with their line numbers and skipped.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
};

use anyhow::{Context, Result, bail};

use crate::{
    commands::cli::ReportArgs,
    event::Line,
    output::sink::Sink,
    output::{Output, OutputFormat},
    pipeline::correlate::Correlator,
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
    let mut output = Output {
        format: OutputFormat::choose(args.json, args.color.forced(), false),
        sink: Sink::stdout(),
    };
    let mut correlator = Correlator::new(args.reports.config());
    let mut problems = 0usize;
    let mut events = 0usize;
    for (index, line) in BufReader::new(input).split(b'\n').enumerate() {
        let number = index + 1;
        let bytes = line.with_context(|| format!("reading {}", args.file.display()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse(&bytes) {
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

/// Event types this version reads; others (from a newer observer) are skipped, as the
/// contract asks of every consumer.
const KNOWN_TYPES: [&str; 8] = [
    "signal",
    "signal_delivered",
    "exit",
    "tcp_reset",
    "tcp_close_at_exit",
    "tcp_listen",
    "tcp_accept",
    "lost",
];

/// One log line: `Some` event, `None` for a line to skip (a report, recomputed rather
/// than replayed, or a type this version does not know), or why it is not an event.
fn parse(bytes: &[u8]) -> Result<Option<Line>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned();
        format!("not JSON ({e}): {shown}")
    })?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or("no \"type\" field")?
        .to_string();
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| format!("not a valid {kind} event: {e}"))
}

/// The reports a whole log yields, its problem lines skipped (`run` does the same while
/// streaming and naming the problems); used by the fuzz target and tests.
pub fn reports_of(log: &[u8], config: crate::pipeline::correlate::Config) -> Vec<Line> {
    let mut correlator = Correlator::new(config);
    let mut reports = Vec::new();
    for line in log.split(|&b| b == b'\n') {
        if let Ok(Some(line)) = parse(line) {
            reports.extend(correlator.observe(&line));
        }
    }
    reports.extend(correlator.finish());
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Event, pipeline::correlate::Config};

    /// Every log the fuzzers kept (fuzz/corpus/report_replay) replays; the seed, a real
    /// `watch` log of a keep-alive server stopped by SIGTERM, yields its two reports.
    #[test]
    fn the_fuzz_corpus_replays() {
        let config = Config {
            after_exit_ns: 200_000_000,
            deploy_window_ns: 500_000_000,
        };
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/report_replay");
        let mut seed_seen = false;
        for entry in std::fs::read_dir(dir).expect("the corpus is in the repository") {
            let path = entry.unwrap().path();
            let reports = reports_of(&std::fs::read(&path).unwrap(), config);
            reports.iter().for_each(|report| drop(report.to_json()));
            if path.ends_with("keepalive-server-sigterm.ndjson") {
                let kinds: Vec<&str> = reports.iter().map(|r| r.event.type_name()).collect();
                assert_eq!(kinds, ["shutdown", "deploy"]);
                let Event::Shutdown(shutdown) = &reports[0].event else {
                    unreachable!()
                };
                assert_eq!(shutdown.open_at_exit.len(), 1, "{shutdown:?}");
                seed_seen = true;
            }
        }
        assert!(seed_seen, "the named seed is missing from {dir}");
    }
}
