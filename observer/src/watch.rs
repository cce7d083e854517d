//! `observer watch`: set up, load, then move records from the ring buffer to the sink
//! until told to stop — and on the way out, detach, drain, and flush everything.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use observer_common::{Settings, signal_bit};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::WatchArgs,
    clock::{self, WallClock},
    correlate::Correlator,
    enrich::Enricher,
    filter::Filter,
    layout::KernelLayout,
    loader::Probes,
    object,
    pipeline::{Output, OutputFormat, Pipeline},
    preflight,
    procfs::ProcHost,
    signals,
    sink::Sink,
    tcp::TcpTracker,
    tracefs,
};

/// How often the lost-record counters are read (and the ring buffer polled as a backstop).
const LOST_POLL: Duration = Duration::from_millis(250);

pub fn run(args: WatchArgs) -> Result<()> {
    let object = object::bytes()?;
    preflight::check_privileges()?;
    let version = preflight::kernel_version()?;
    preflight::check_kernel(version)?;
    preflight::raise_memlock(version);
    let events = tracefs::ensure_mounted()?;
    let btf_path = std::env::var_os("OBSERVER_BTF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"));
    let layout = KernelLayout::read(&events, &btf_path)?;
    if let Some(problem) = &layout.btf_problem {
        eprintln!(
            "observer: warning: no usable kernel BTF ({problem}); exit statuses are \
             inferred from exit_group() calls and fatal signals, core dumps and parent \
             pids are not reported"
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
    if layout.tgkill.is_none() {
        eprintln!(
            "observer: warning: syscall tracepoints are unavailable; the process of a \
             thread-directed signal's target is looked up in /proc"
        );
    }

    let signal_mask = args
        .signals
        .0
        .iter()
        .map(|&sig| signal_bit(sig))
        .fold(0, |a, b| a | b);
    let fatal_default_mask = if layout.btf_problem.is_some() {
        (1..=64)
            .filter(|&sig| signals::is_fatal_by_default(sig))
            .map(signal_bit)
            .fold(0, |a, b| a | b)
    } else {
        0
    };
    let format = OutputFormat::choose(args.json, args.color, args.output.is_some());
    let sink = match &args.output {
        Some(path) => Sink::file(path)?,
        None => Sink::stdout(),
    };

    let termination_mask = signals::TERMINATION_SIGNALS
        .iter()
        .map(|&sig| signal_bit(sig))
        .fold(0, |a, b| a | b);
    let settings = Settings {
        signal_mask,
        fatal_default_mask,
        termination_mask,
    };
    let (probes, ring) = Probes::load(object, &layout, settings, args.ring_buffer_kib * 1024)?;
    let host = hostname();
    let pipeline = Pipeline {
        correlator: Correlator::new(args.reports.config()),
        enricher: Enricher::new(
            ProcHost::new(),
            signal_mask,
            TcpTracker::new(layout.rst_reasons.clone()),
        ),
        filter: Filter::new(args.pids.clone(), args.comms.clone(), args.ports.clone())
            .excluding(std::process::id()),
        output: Output { format, sink },
        clock: WallClock::now(),
        host: host.clone(),
        undecodable: 0,
        scratch: Vec::new(),
    };
    let names: Vec<String> = args.signals.0.iter().map(|&s| signals::name(s)).collect();
    eprintln!(
        "observer: watching {}, process exits and TCP on {host} ({} programs attached{})",
        names.join(","),
        probes.attached.len(),
        if layout.btf_problem.is_some() {
            ", no BTF"
        } else {
            ""
        }
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(event_loop(probes, ring, pipeline, args.duration))
}

async fn event_loop(
    mut probes: Probes,
    ring: RingBuf<MapData>,
    mut pipeline: Pipeline<ProcHost>,
    duration: Option<Duration>,
) -> Result<()> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the RingBuf) is dropped.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .context("polling the ring buffer")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let stop_at = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u32::MAX as u64)));
    tokio::pin!(stop_at);
    let mut lost_poll = tokio::time::interval(LOST_POLL);
    let mut lost_reported = 0u64;
    let reason = loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), &mut pipeline)?;
                guard.clear_ready();
                // A record committed between the drain and clear_ready() woke nobody:
                // drain once more so it cannot wait for the next wake-up.
                drain(guard.get_inner_mut(), &mut pipeline)?;
                pipeline.output.sink.flush()?;
            }
            _ = lost_poll.tick() => {
                drain(ring.get_mut(), &mut pipeline)?;
                report_lost(&probes, &mut pipeline, &mut lost_reported)?;
                pipeline.advance(clock::monotonic_ns())?;
                pipeline.output.sink.flush()?;
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = &mut stop_at => break "--duration elapsed",
        }
        if pipeline.output.sink.is_closed() {
            break "output closed";
        }
    };
    // Detach first so that the drain below sees everything there will ever be.
    probes.detach();
    drain(ring.get_mut(), &mut pipeline)?;
    report_lost(&probes, &mut pipeline, &mut lost_reported)?;
    pipeline.finish()?;
    if pipeline.undecodable > 0 {
        eprintln!(
            "observer: warning: {} kernel records could not be decoded",
            pipeline.undecodable
        );
    }
    eprintln!("observer: stopped ({reason}); {lost_reported} events lost");
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline<ProcHost>) -> Result<()> {
    while let Some(item) = ring.next() {
        pipeline.handle_record(&item)?;
    }
    Ok(())
}

fn report_lost(
    probes: &Probes,
    pipeline: &mut Pipeline<ProcHost>,
    reported: &mut u64,
) -> Result<()> {
    let total = probes.lost_total()?;
    if total > *reported {
        pipeline.handle_lost(total - *reported, clock::monotonic_ns())?;
        *reported = total;
    }
    Ok(())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    crate::decode::comm(&buf)
}
