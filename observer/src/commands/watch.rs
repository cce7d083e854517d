//! `observer watch`: a session from the command line until a signal, `--duration` or a
//! closed output stops it; with `--gate`, until the service's deploy report.
use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    commands::{
        cli::{ConnectionLines, ResetLines, WatchArgs},
        metrics_server,
        session::{Options, Session},
    },
    event::{Event, Line, Verdict},
    host::procfs::ProcHost,
    output::{Output, OutputFormat, metrics::Metrics, sink::Sink},
    pipeline::{
        Pipeline,
        filter::{Filter, Scope},
    },
};

/// How `watch` ended.
pub enum Ended {
    /// Stopped by a signal, `--duration` or a closed output.
    Stopped,
    /// `--gate`: the service's deploy report was clean.
    GatePassed,
    /// `--gate`: it was not.
    GateFailed,
    /// `--gate --timeout`: no deploy report in time.
    GateTimedOut,
}

pub fn run(args: WatchArgs) -> Result<Ended> {
    let metrics_listener = args.metrics.map(metrics_server::bind).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handle SIGTERM/SIGINT before "watching" is printed: a stop that arrives as soon as
    // the programs are attached must still drain and flush, not kill observer.
    let (mut sigterm, mut sigint) = {
        let _runtime = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let mut session = Session::start(options(&args)?)?;
    session
        .pipeline
        .host_mut()
        .set_container_roots(crate::host::containers::Roots {
            docker: args.docker_root.clone(),
            ..Default::default()
        });
    if args.gate.is_some() {
        session.pipeline.collect_reports();
    }
    let metrics = metrics_listener.map(|listener| {
        let metrics = Metrics::shared();
        session.pipeline.count_into(metrics.clone());
        (listener, metrics)
    });
    let gate = args.gate.as_deref();
    let (limit, elapsed) = limit(&args);
    let reason = runtime.block_on(async {
        if let Some((listener, metrics)) = metrics {
            metrics_server::spawn(listener, metrics)?;
        }
        let stop = async move {
            tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
                _ = sleep_or_forever(limit) => elapsed,
            }
        };
        let done = |pipeline: &Pipeline<ProcHost>| gate_report(gate, pipeline).is_some();
        anyhow::Ok(session.run_until(stop, done).await?.unwrap_or("done"))
    })?;
    let lost = session.finish()?;
    eprintln!("observer: stopped ({reason}); {lost} events lost");
    match gate {
        None => Ok(Ended::Stopped),
        Some(service) => print_gate(&args, service, &mut session.pipeline),
    }
}

/// What the session watches, and where its lines go, per the command line.
fn options(args: &WatchArgs) -> Result<Options> {
    let sink = match (&args.output, &args.gate) {
        (Some(path), _) => Sink::file(path)?,
        // A gate prints only the deploy report it waited for.
        (None, Some(_)) => Sink::discard(),
        (None, None) => Sink::stdout(),
    };
    let format = OutputFormat::choose(args.json, args.color.forced(), args.output.is_some());
    Ok(Options {
        signals: args.signals.0.clone(),
        filter: Filter::new(args.pids.clone(), args.comms.clone(), args.ports.clone()).within(
            Scope {
                units: args.units.clone(),
                containers: args.containers.clone(),
                cgroups: args.cgroups.clone(),
            },
        ),
        output: {
            let mut output = Output::new(format, sink);
            if args.connections == ConnectionLines::Each {
                output.show_every_connection();
            }
            output
        },
        reports: args.reports.config(),
        ring_buffer_kib: args.ring_buffer_kib,
        every_reset: args.resets == ResetLines::Each,
        container_stop_signals: crate::host::containers::stop_signals(&args.docker_root),
    })
}

/// Whichever ends first, and what to call it: --duration, or --gate's --timeout.
fn limit(args: &WatchArgs) -> (Option<Duration>, &'static str) {
    match (args.duration, args.timeout) {
        (Some(duration), Some(timeout)) if timeout < duration => {
            (Some(timeout), "--timeout elapsed")
        }
        (Some(duration), _) => (Some(duration), "--duration elapsed"),
        (None, timeout) => (timeout, "--timeout elapsed"),
    }
}

/// `--gate`: the deploy report of `service` written so far.
fn gate_report(service: Option<&str>, pipeline: &Pipeline<ProcHost>) -> Option<Line> {
    let service = service?;
    pipeline
        .collected()
        .iter()
        .find(|line| match &line.event {
            Event::Deploy(deploy) => gate_matches(service, &deploy.service),
            _ => false,
        })
        .cloned()
}

/// `--gate`: prints the deploy's shutdown reports, then the deploy report, on stdout;
/// how the gate ended.
fn print_gate(args: &WatchArgs, service: &str, pipeline: &mut Pipeline<ProcHost>) -> Result<Ended> {
    let Some(deploy) = gate_report(Some(service), pipeline) else {
        eprintln!("observer: no deploy report for {service} before observer stopped");
        return Ok(Ended::GateTimedOut);
    };
    let Event::Deploy(report) = &deploy.event else {
        unreachable!("gate_report finds deploy reports");
    };
    let mut stdout = Output::new(
        OutputFormat::choose(args.json, args.color.forced(), false),
        Sink::stdout(),
    );
    let collected = pipeline.take_collected();
    for line in &collected {
        if let Event::Shutdown(shutdown) = &line.event
            && report.stopped.contains(&shutdown.pid)
        {
            stdout.write(line)?;
        }
    }
    stdout.write(&deploy)?;
    stdout.sink.finish()?;
    Ok(if report.verdict == Verdict::Clean {
        Ended::GatePassed
    } else {
        Ended::GateFailed
    })
}

/// `--gate app.service` names `unit:app.service`; the full form works too.
fn gate_matches(gate: &str, service: &str) -> bool {
    service == gate
        || service
            .split_once(':')
            .is_some_and(|(_, name)| name == gate)
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
