//! A session, the engine of `watch` and `rehearse`: set up, load, then move records from
//! the ring buffer to the pipeline until told to stop — and on the way out, detach,
//! drain, and flush everything.
use std::{
    collections::HashSet,
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use observer_common::{Settings, signal_bit};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    host::clock, host::procfs, host::procfs::ProcHost, host::signals,
    kernel::exit_stage::ExitStages, kernel::layout::KernelLayout, kernel::loader::Probes,
    kernel::object, kernel::preflight, kernel::tracefs, output::Output, pipeline::Pipeline,
    pipeline::correlate::Correlator, pipeline::decode::Record, pipeline::enrich::Enricher,
    pipeline::filter::Filter, pipeline::staged::StagedExits, pipeline::tcp::TcpTracker,
};

/// How often the ring buffer is drained. The kernel programs do not wake observer per
/// record (only signals, and a ring a quarter full, do): this bounds how late a record
/// is handled, and turns one wake-up per record into one per batch on a busy host.
const RING_POLL: Duration = Duration::from_millis(20);
/// How long after a process's first termination signal, while it runs, the programs that
/// only shutdowns need (accept tracing) stay attached: past Kubernetes' 30 s and systemd's
/// 90 s grace periods, and bounded for a process that takes a SIGHUP as a reload.
const SHUTDOWN_TRACING_WINDOW: Duration = Duration::from_secs(300);
/// How often the lost-record counters are read.
const LOST_POLL: Duration = Duration::from_millis(250);
/// With `--unit/--container/--cgroup`, how often new cgroups are looked for (a cgroup id
/// unknown to an exit record triggers a scan sooner).
const SCOPE_RESCAN: Duration = Duration::from_secs(2);

/// What a session watches and where its lines go.
pub struct Options {
    /// Signals to report.
    pub signals: Vec<i32>,
    /// Signals reported when they are their target container's stop signal.
    pub container_stop_signals: Vec<i32>,
    pub filter: Filter,
    pub output: Output,
    pub reports: crate::pipeline::correlate::Config,
    pub ring_buffer_kib: u32,
    /// Every RST its own line, refusals too (else refusals are counted: `tcp_refused`).
    pub every_reset: bool,
}

/// The attached programs, their ring buffer, and the pipeline they feed.
pub struct Session {
    probes: Probes,
    ring: Option<RingBuf<MapData>>,
    /// Exit records the kernel staged per CPU instead of the ring.
    exit_stages: ExitStages,
    pub pipeline: Pipeline<ProcHost>,
    lost_reported: u64,
    /// With a scope: what the kernel was told to skip.
    kernel_scope: Option<KernelScope>,
}

/// The cgroups outside `--unit/--container/--cgroup` that the programs skip.
struct KernelScope {
    /// Out of scope as of the last sync (existing cgroups only, so it stays bounded).
    excluded: HashSet<u64>,
    /// The cgroup index (its change count) that sync used.
    synced_index_changes: u64,
    /// None until the first scan.
    last_rescan: Option<Instant>,
}

impl Session {
    /// Checks the host, loads and attaches the programs.
    pub fn start(options: Options) -> Result<Self> {
        let object = object::bytes()?;
        preflight::check_privileges()?;
        let version = preflight::kernel_version()?;
        preflight::check_kernel(version)?;
        preflight::raise_memlock(version);
        let events = tracefs::ensure_mounted()?;
        let btf_path = crate::kernel::layout::btf_path();
        let layout = KernelLayout::read(&events, &btf_path)?;
        warn_about_gaps(&layout);
        let signal_mask = mask(options.signals.iter().copied());
        let container_stop_mask = mask(options.container_stop_signals.iter().copied());
        let fatal_default_mask = if layout.btf_problem.is_some() {
            mask((1..=64).filter(|&sig| signals::is_fatal_by_default(sig)))
        } else {
            0
        };
        let settings = Settings {
            signal_mask: signal_mask | container_stop_mask,
            fatal_default_mask,
            termination_mask: mask(signals::TERMINATION_SIGNALS.iter().copied()),
            scope_filtered: u64::from(options.filter.is_scoped()),
            // The loader derives these from the ring's size and its architecture.
            wakeup_bytes: 0,
            stores_in_order: 0,
        };
        let (probes, ring, exit_stages) =
            Probes::load(object, &layout, settings, options.ring_buffer_kib * 1024)?;
        let host = hostname();
        let mut pipeline = Pipeline::new(
            Enricher::new(
                ProcHost::new(),
                signal_mask,
                TcpTracker::new(layout.rst_reasons.clone())
                    .with_ephemeral_ports(procfs::ephemeral_ports()),
            )
            .with_container_stop_signals(container_stop_mask),
            options.filter.excluding(std::process::id()),
            Correlator::new(options.reports),
            options.output,
            host.clone(),
        );
        if options.every_reset {
            pipeline.write_every_reset();
        }
        let names: Vec<String> = options.signals.iter().map(|&s| signals::name(s)).collect();
        let shutdown_only: Vec<&str> = probes.shutdown_only().collect();
        eprintln!(
            "observer: watching {}, process exits and TCP on {host} ({} programs attached{}{})",
            names.join(","),
            probes.attached.len(),
            if shutdown_only.is_empty() {
                String::new()
            } else {
                format!(", {} while a process shuts down", shutdown_only.join(","))
            },
            if layout.btf_problem.is_some() {
                ", no BTF"
            } else {
                ""
            }
        );
        let mut session = Self {
            kernel_scope: pipeline.filter().is_scoped().then(|| KernelScope {
                excluded: HashSet::new(),
                synced_index_changes: 0,
                last_rescan: None,
            }),
            probes,
            ring: Some(ring),
            exit_stages,
            pipeline,
            lost_reported: 0,
        };
        session.sync_kernel_scope()?;
        Ok(session)
    }

    /// Moves records to the pipeline until `until` completes (its value), or `done` holds
    /// for the pipeline or the output is closed (None).
    pub async fn run_until<T>(
        &mut self,
        until: impl Future<Output = T>,
        done: impl Fn(&Pipeline<ProcHost>) -> bool,
    ) -> Result<Option<T>> {
        let ring = self.ring.take().expect("one run at a time");
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
        // AsyncFd (which owns the RingBuf) gives it back below.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(std::io::Error::from)
            .context("polling the ring buffer")?;
        tokio::pin!(until);
        let mut ring_poll = tokio::time::interval(RING_POLL);
        ring_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lost_poll = tokio::time::interval(LOST_POLL);
        // logrotate's convention: SIGHUP means "reopen your log file".
        let mut hangup = signal(SignalKind::hangup())?;
        let outcome = loop {
            tokio::select! {
                ready = ring.readable_mut() => {
                    let mut guard = ready?;
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                    // A record committed between the drain and clear_ready() woke nobody:
                    // drain once more so it cannot wait for the next wake-up.
                    self.drain(guard.get_inner_mut())?;
                    self.sync_shutdown_tracing()?;
                    self.pipeline.sink().flush()?;
                }
                _ = ring_poll.tick() => {
                    self.drain(ring.get_mut())?;
                    self.sync_shutdown_tracing()?;
                    self.pipeline.sink().flush()?;
                }
                _ = lost_poll.tick() => {
                    self.drain(ring.get_mut())?;
                    self.sync_shutdown_tracing()?;
                    self.report_lost()?;
                    self.sync_kernel_scope()?;
                    self.pipeline.advance(clock::monotonic_ns())?;
                    self.pipeline.sink().flush()?;
                }
                _ = hangup.recv() => self.pipeline.sink().reopen()?,
                value = &mut until => break Some(value),
            }
            if self.pipeline.sink().is_closed() || done(&self.pipeline) {
                break None;
            }
        };
        self.ring = Some(ring.into_inner());
        Ok(outcome)
    }

    /// Detaches the programs, drains what they left, writes every pending report and
    /// syncs the output; returns how many records were lost.
    pub fn finish(&mut self) -> Result<u64> {
        // Detach first so that the drain below sees everything there will ever be.
        self.probes.detach();
        if let Some(mut ring) = self.ring.take() {
            self.drain(&mut ring)?;
            self.ring = Some(ring);
        }
        self.report_lost()?;
        self.pipeline.finish()?;
        if self.pipeline.undecodable() > 0 {
            eprintln!(
                "observer: warning: {} kernel records could not be decoded",
                self.pipeline.undecodable()
            );
        }
        Ok(self.lost_reported)
    }

    /// Attaches the shutdown-only programs while a shutdown is under way, and detaches
    /// them after. Called after each drain and before the flush, so that they are attached
    /// by the time a signal's line can be read.
    fn sync_shutdown_tracing(&mut self) -> Result<()> {
        let under_way = self.pipeline.shutdown_under_way(
            clock::monotonic_ns(),
            SHUTDOWN_TRACING_WINDOW.as_nanos() as u64,
        );
        self.probes.trace_shutdowns(under_way)?;
        Ok(())
    }

    /// Hands the kernel the cgroups found since the last sync that the scope leaves out.
    fn sync_kernel_scope(&mut self) -> Result<()> {
        let Some(scope) = &mut self.kernel_scope else {
            return Ok(());
        };
        let (host, filter) = self.pipeline.host_and_filter();
        if host.rescan_deferred()
            || scope
                .last_rescan
                .is_none_or(|at| at.elapsed() >= SCOPE_RESCAN)
        {
            host.rescan();
            scope.last_rescan = Some(Instant::now());
        }
        if host.cgroup_index_changes() == scope.synced_index_changes {
            return Ok(());
        }
        scope.synced_index_changes = host.cgroup_index_changes();
        let excluded: HashSet<u64> = host
            .cgroups()
            .filter(|(_, path)| filter.scope_excludes(path))
            .map(|(id, _)| id)
            .collect();
        for &id in excluded.difference(&scope.excluded) {
            self.probes.exclude_cgroup(id)?;
        }
        scope.excluded = excluded;
        Ok(())
    }

    /// Hands every record waiting in the ring and the exit stages to the pipeline, in
    /// time order. A termination signal turns the shutdown-only programs on before its
    /// record is handled: enriching it reads the target's /proc entry, which can take
    /// tens of milliseconds on a host with many sockets, while the target may already be
    /// accepting.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        // See StagedExits for why the stages are read again.
        let mut exits = StagedExits::default();
        let mut stages_read_at = self.read_stages(&mut exits);
        while let Some(item) = ring.next() {
            let Some(record) = self.pipeline.decode(&item) else {
                continue;
            };
            let at = record.header().mono_ns;
            if at > stages_read_at {
                stages_read_at = self.read_stages(&mut exits);
            }
            while let Some(exit) = exits.next_before(at) {
                self.pipeline.handle(&exit)?;
            }
            if starts_a_shutdown(&record) {
                self.probes.trace_shutdowns(true)?;
            }
            self.pipeline.handle(&record)?;
        }
        exits
            .rest()
            .try_for_each(|exit| self.pipeline.handle(&exit))
    }

    /// Adds the exits staged since the last read to `exits`; returns the time (kernel
    /// monotonic ns) just before the read: every exit published before it was read.
    fn read_stages(&mut self, exits: &mut StagedExits) -> u64 {
        let read_at = clock::monotonic_ns();
        let mut staged = Vec::new();
        self.exit_stages.take(&mut staged);
        exits.add(
            staged
                .into_iter()
                .map(|exit| self.pipeline.staged_exit(exit)),
        );
        read_at
    }

    fn report_lost(&mut self) -> Result<()> {
        let total = self.probes.lost_total()?;
        if total > self.lost_reported {
            self.pipeline
                .handle_lost(total - self.lost_reported, clock::monotonic_ns())?;
            self.lost_reported = total;
        }
        Ok(())
    }
}

fn mask(signals: impl Iterator<Item = i32>) -> u64 {
    signals.map(signal_bit).fold(0, |a, b| a | b)
}

fn warn_about_gaps(layout: &KernelLayout) {
    if let Some(problem) = &layout.btf_problem {
        eprintln!(
            "observer: warning: no usable kernel BTF ({problem}); exit statuses are \
             inferred from exit_group() calls and fatal signals, core dumps and parent \
             pids are not reported, and the process of a thread-directed signal's \
             target is looked up in /proc"
        );
    }
    if let Some(problem) = &layout.tcp_problem {
        eprintln!("observer: warning: TCP tracepoints unavailable ({problem}); no TCP events");
    } else if layout.sock.known == 0 {
        eprintln!(
            "observer: warning: without BTF, owners of accepted connections and \
             connections closed at exit are not reported"
        );
    }
    if layout
        .tcp
        .as_ref()
        .is_some_and(|tcp| tcp.send_reset.reason == observer_common::FIELD_ABSENT)
    {
        let consequence = crate::kernel::tracepoints::missing_field_consequence(
            &crate::kernel::tracepoints::TCP_SEND_RESET,
            "reason",
        );
        eprintln!(
            "observer: warning: tcp:tcp_send_reset has no reason field: {}",
            consequence.unwrap_or_default()
        );
    }
    if layout.sock.known != 0 && layout.tcp.as_ref().is_some_and(|tcp| tcp.accept.is_none()) {
        eprintln!(
            "observer: warning: syscall tracepoints are unavailable; accepts after a \
             termination signal are not reported"
        );
    }
}

/// Whether a kernel record is a termination signal the kernel delivered (or queued).
fn starts_a_shutdown(record: &Record) -> bool {
    matches!(
        record,
        Record::SignalGenerate(r)
            if r.result == 0 && signals::TERMINATION_SIGNALS.contains(&r.sig)
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    crate::pipeline::decode::comm(&buf)
}
