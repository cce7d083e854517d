//! A saved `watch --json` log in, its reports out: the events of each line through the
//! correlator. Lines that are not events are the caller's to name; reports in the log are
//! recomputed, not replayed, and types this version does not know are skipped.
use crate::{
    event::Line,
    pipeline::correlate::{Config, Correlator},
};

/// Event types this version reads; others (from a newer observer) are skipped, as the
/// contract asks of every consumer.
const KNOWN_TYPES: [&str; 10] = [
    "signal",
    "signal_delivered",
    "exit",
    "tcp_reset",
    "tcp_refused",
    "tcp_close_at_exit",
    "tcp_close_in_flight",
    "tcp_listen",
    "tcp_accept",
    "lost",
];

/// One log line: `Some` event, `None` for a line to skip (a report, recomputed rather
/// than replayed, or a type this version does not know), or why it is not an event.
pub fn parse(bytes: &[u8]) -> Result<Option<Line>, String> {
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

/// The reports a whole log yields, its problem lines skipped (`observer report` does the
/// same while streaming and naming the problems); used by the fuzz target and tests.
pub fn reports_of(log: &[u8], config: Config) -> Vec<Line> {
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
    use crate::event::Event;

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
