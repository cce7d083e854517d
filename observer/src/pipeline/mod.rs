//! Kernel records in, rendered lines out: decode → enrich → filter → render → sink, with
//! every written line also fed to the correlator, whose reports are written after it.
//! Free of aya, tokio and the CLI, so it runs the same on live records and in tests.
pub mod correlate;
pub mod decode;
pub mod enrich;
pub mod exit_inference;
pub mod filter;
pub mod refusals;
pub mod replay;
pub mod staged;
pub mod tcp;

use anyhow::Result;
use observer_common::ProcessExitRecord;

use crate::{
    event::{Event, Line, LostEvent, SCHEMA_VERSION},
    host::clock::WallClock,
    output::metrics::{self, SharedMetrics},
    output::{Output, sink::Sink},
    pipeline::correlate::Correlator,
    pipeline::decode::{Record, decode},
    pipeline::enrich::{Enricher, HostView, Timed},
    pipeline::filter::Filter,
    pipeline::refusals::Refusals,
};

/// How long one `tcp_refused` line counts an endpoint's refusals for, at most.
const REFUSAL_INTERVAL_NS: u64 = 1_000_000_000;

pub struct Pipeline<H> {
    enricher: Enricher<H>,
    filter: Filter,
    correlator: Correlator,
    output: Output,
    clock: WallClock,
    host: String,
    /// Records that did not decode (a kernel/userspace mismatch: a bug, never expected).
    undecodable: u64,
    /// Reused for the events of one record.
    scratch: Vec<Timed>,
    /// When set, every report line written is also kept here (for rehearse and --gate).
    collected: Option<Vec<Line>>,
    /// When set, every line written is also counted here (`--metrics`).
    metrics: Option<SharedMetrics>,
    /// Refused connections, counted into `tcp_refused` lines (None: every RST its own
    /// `tcp_reset` line, `--resets each`).
    refusals: Option<Refusals>,
}

impl<H: HostView> Pipeline<H> {
    pub fn new(
        enricher: Enricher<H>,
        filter: Filter,
        correlator: Correlator,
        output: Output,
        host: String,
    ) -> Self {
        Self {
            enricher,
            filter,
            correlator,
            output,
            clock: WallClock::now(),
            host,
            undecodable: 0,
            scratch: Vec::new(),
            collected: None,
            metrics: None,
            refusals: Some(Refusals::new(REFUSAL_INTERVAL_NS)),
        }
    }

    /// Decodes one kernel record; None (counted, and warned about once) when it does not
    /// decode.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Record> {
        if let Some(metrics) = &self.metrics {
            metrics::lock(metrics).kernel_record_read();
        }
        match decode(bytes) {
            Ok(record) => Some(record),
            Err(error) => {
                if self.undecodable == 0 {
                    eprintln!("observer: warning: undecodable kernel record: {error}");
                }
                self.undecodable += 1;
                None
            }
        }
    }

    /// An exit the kernel staged instead of sending through the ring (counted as a
    /// kernel record read, as `decode` counts the ring's).
    pub fn staged_exit(&mut self, exit: ProcessExitRecord) -> Record {
        if let Some(metrics) = &self.metrics {
            metrics::lock(metrics).kernel_record_read();
        }
        Record::ProcessExit(exit)
    }

    /// Enriches, filters, writes and correlates the events of one decoded record.
    pub fn handle(&mut self, record: &Record) -> Result<()> {
        let mut events = std::mem::take(&mut self.scratch);
        self.enricher.enrich(record, &mut events);
        let result = events
            .drain(..)
            .try_for_each(|(mono_ns, event)| self.emit(mono_ns, event));
        self.scratch = events;
        result
    }

    /// `count` records were dropped by the kernel (ring buffer full) before `mono_ns`.
    pub fn handle_lost(&mut self, count: u64, mono_ns: u64) -> Result<()> {
        self.emit(mono_ns, Event::Lost(LostEvent { count }))
    }

    fn emit(&mut self, mono_ns: u64, event: Event) -> Result<()> {
        for (mono_ns, event) in self.filter.admit(mono_ns, event) {
            self.write_event(mono_ns, event)?;
        }
        Ok(())
    }

    fn write_event(&mut self, mono_ns: u64, event: Event) -> Result<()> {
        self.write_refusals_due(mono_ns)?;
        if let Event::TcpReset(reset) = &event
            && reset.refused_endpoint().is_some()
            && self.refusals.is_some()
        {
            return self.count_refusal(mono_ns, event);
        }
        let line = self.line(mono_ns, event);
        self.output.write(&line)?;
        self.count(std::slice::from_ref(&line));
        let reports = self.correlator.observe(&line);
        self.write_reports(reports)
    }

    /// A refusal: the correlator takes it (its reports count each one), its tally counts
    /// it, and no line is written for it alone.
    fn count_refusal(&mut self, mono_ns: u64, event: Event) -> Result<()> {
        // No container lookup: the line is only the correlator's.
        let line = self.bare_line(mono_ns, event);
        let reports = self.correlator.observe(&line);
        let counted_for = self.correlator.refusal_counted_for();
        if let (Event::TcpReset(reset), Some(refusals)) = (&line.event, &mut self.refusals)
            && let Some((first_ns, closed)) = refusals.add(mono_ns, reset, counted_for)
        {
            self.write_tally(first_ns, closed)?;
        }
        self.write_reports(reports)
    }

    /// Writes the refusal tallies due by `now_ns`: those whose interval passed, and,
    /// when the correlator is about to write reports, those counted for one, so that
    /// they come before it (a replayed log then counts them the same).
    fn write_refusals_due(&mut self, now_ns: u64) -> Result<()> {
        let Some(refusals) = &mut self.refusals else {
            return Ok(());
        };
        let mut due = refusals.due(now_ns);
        if refusals.any_counted() && self.correlator.reports_due(now_ns) {
            due.extend(refusals.counted());
        }
        due.into_iter()
            .try_for_each(|(first_ns, event)| self.write_tally(first_ns, event))
    }

    /// A `tcp_refused` line, not shown to the correlator: it took each refusal already.
    fn write_tally(&mut self, first_ns: u64, event: Event) -> Result<()> {
        let line = self.line(first_ns, event);
        self.output.write(&line)?;
        self.count(std::slice::from_ref(&line));
        Ok(())
    }

    fn line(&mut self, mono_ns: u64, event: Event) -> Line {
        let container_info = self.enricher.container_of(&event);
        Line {
            container_info,
            ..self.bare_line(mono_ns, event)
        }
    }

    /// The line of `event`, without its container.
    fn bare_line(&self, mono_ns: u64, event: Event) -> Line {
        Line {
            v: SCHEMA_VERSION,
            event,
            time: self.clock.rfc3339(mono_ns),
            mono_ns,
            host: self.host.clone(),
            container_info: None,
        }
    }

    /// The clock reached `mono_ns`: writes the refusal tallies and reports now due.
    pub fn advance(&mut self, mono_ns: u64) -> Result<()> {
        self.write_refusals_due(mono_ns)?;
        let reports = self.correlator.advance(mono_ns);
        self.write_reports(reports)
    }

    /// Writes every pending report, then flushes and syncs the output.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(refusals) = &mut self.refusals {
            for (first_ns, event) in refusals.all() {
                self.write_tally(first_ns, event)?;
            }
        }
        let reports = self.correlator.finish();
        self.write_reports(reports)?;
        self.output.sink.finish()
    }

    fn write_reports(&mut self, reports: Vec<Line>) -> Result<()> {
        self.output.write_all(&reports)?;
        self.count(&reports);
        if let Some(collected) = &mut self.collected {
            collected.extend(reports);
        }
        Ok(())
    }

    /// The host view the enricher reads.
    pub fn host_mut(&mut self) -> &mut H {
        self.enricher.host_mut()
    }

    /// The host view the enricher reads, with the filter (to rescan cgroups and tell
    /// which are out of scope).
    pub fn host_and_filter(&mut self) -> (&mut H, &Filter) {
        (self.enricher.host_mut(), &self.filter)
    }
}

impl<H> Pipeline<H> {
    /// From now on, keep every report line written (see [`Self::collected`]).
    pub fn collect_reports(&mut self) {
        self.collected = Some(Vec::new());
    }

    /// The report lines kept since [`Self::collect_reports`].
    pub fn collected(&self) -> &[Line] {
        self.collected.as_deref().unwrap_or_default()
    }

    /// Takes the report lines kept so far.
    pub fn take_collected(&mut self) -> Vec<Line> {
        self.collected.take().unwrap_or_default()
    }

    /// From now on, every RST its own `tcp_reset` line, refusals too (`--resets each`).
    pub fn write_every_reset(&mut self) {
        self.refusals = None;
    }

    /// Counts every line written into `metrics` from now on.
    pub fn count_into(&mut self, metrics: SharedMetrics) {
        self.metrics = Some(metrics);
    }

    pub fn sink(&mut self) -> &mut Sink {
        &mut self.output.sink
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Records that did not decode.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Whether some process is shutting down (see [`Correlator::shutdown_under_way`]).
    pub fn shutdown_under_way(&self, now_ns: u64, window_ns: u64) -> bool {
        self.correlator.shutdown_under_way(now_ns, window_ns)
    }

    fn count(&self, lines: &[Line]) {
        if let Some(metrics) = &self.metrics {
            let mut metrics = metrics::lock(metrics);
            lines.iter().for_each(|line| metrics.observe(line));
        }
    }
}
