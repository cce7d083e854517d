//! The command line.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::host::signals;

#[derive(Parser, Debug)]
#[command(
    name = "observer",
    version,
    about = "See how processes shut down: termination signals, handlers, exits — from kernel evidence"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Rehearse a service's shutdown: start CMD in a cgroup, load it, stop it as a platform
    /// does (signal, grace, SIGKILL), and report how it went. Exit 1 unless clean.
    Rehearse(RehearseArgs),
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line's definition.
    Man,
    /// Check that `watch` can run here: kernel, privileges, BTF, tracefs, and every program
    /// loaded and attached for real. Exit status 1 if it cannot.
    Check,
    /// Replay a saved `watch --json` log and print its shutdown and deploy reports
    /// (the JSON is byte-identical to the reports `watch` wrote live).
    Report(ReportArgs),
    /// Advise the grace period and pre-stop delay each service needs, from the stops in
    /// saved `watch --json` logs: how long each drained, how long traffic kept coming.
    Advise(AdviseArgs),
    /// Print termination signals, process exits and the TCP evidence of shutdowns (resets,
    /// connections open at exit, listeners) on this host as they happen.
    Watch(Box<WatchArgs>),
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Write NDJSON events (docs/events-v1.md) instead of human-readable lines.
    #[arg(long)]
    pub json: bool,

    /// Append events to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9477) at /metrics: shutdowns by
    /// verdict and service, drain time, SIGKILLs after grace, lost events, events by type.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Stop after SECS seconds (fractions allowed), flushing every event.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<Duration>,

    /// Signals to report, comma-separated names or numbers.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "TERM,INT,QUIT,HUP,KILL",
        value_parser = parse_signal_list
    )]
    pub signals: SignalList,

    /// Only events about this process (repeatable).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Only events about processes with this command name (repeatable; at most 15
    /// characters, as the kernel keeps them).
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,

    /// Only TCP events on this local port, and the signals and exits of the processes
    /// seen holding it (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only processes in this systemd unit (e.g. app.service; repeatable).
    #[arg(long = "unit", value_name = "UNIT")]
    pub units: Vec<String>,

    /// Only processes in this container (its id, or a prefix such as the 12-hex short
    /// form; repeatable).
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Only processes in this cgroup v2 group or below it (a path under the cgroup2
    /// root, e.g. /kubepods.slice; repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,

    /// Docker's data root (dockerd's --data-root), where each container's name, image
    /// and labels are read from (containers/ID/config.v2.json).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/docker")]
    pub docker_root: PathBuf,

    /// Size of the kernel→userspace ring buffer in KiB (a power of two, at least 4). The
    /// default holds a node drain: 3,000 servers holding connections stopped within a
    /// second are about 24,000 records, and a 1 MiB buffer lost 5,700 of them.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    /// Refused connections (RSTs from a port nobody listens on, and the refusals this
    /// host's clients receive): `summary` counts them into one `tcp_refused` line per
    /// refusing address per second; `each` writes every RST as its own `tcp_reset`.
    #[arg(long, value_enum, default_value_t = ResetLines::Summary)]
    pub resets: ResetLines,

    /// In the human format, a process's connections closed at exit and RSTs it sent:
    /// `summary` shows its first 8 of each and one line for the rest (its report counts
    /// them all); `each` shows every one. `--json` writes every one either way.
    #[arg(long, value_enum, default_value_t = ConnectionLines::Summary)]
    pub connections: ConnectionLines,

    /// When to colour the human format.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    #[command(flatten)]
    pub reports: ReportTiming,

    /// A deploy gate: wait for SERVICE's next deploy report (`unit:app.service`, or just
    /// `app.service`; a container, cgroup or `comm:NAME:PORTS` as in reports), print it
    /// with its shutdowns, and exit 0 if it is clean, 1 if not.
    #[arg(long, value_name = "SERVICE")]
    pub gate: Option<String>,

    /// With --gate: give up after SECS (exit 2).
    #[arg(long, value_name = "SECS", value_parser = parse_duration, requires = "gate")]
    pub timeout: Option<Duration>,
}

/// When reports are written.
#[derive(Args, Debug, Clone, Copy)]
pub struct ReportTiming {
    /// After a process exits, keep counting clients refused on its ports for SECS
    /// before writing its shutdown report.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub after_exit: Duration,

    /// A deploy ends SECS after the last termination signal in its service.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub deploy_window: Duration,
}

impl ReportTiming {
    pub fn config(&self) -> crate::pipeline::correlate::Config {
        crate::pipeline::correlate::Config {
            after_exit_ns: self.after_exit.as_nanos() as u64,
            deploy_window_ns: self.deploy_window.as_nanos() as u64,
        }
    }
}

#[derive(Args, Debug)]
pub struct AdviseArgs {
    /// Logs (NDJSON from `observer watch --json`), e.g. several days of them.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// One JSON object per service instead of text.
    #[arg(long)]
    pub json: bool,

    /// The timing `watch` ran with (its --after-exit bounds the routing lag seen).
    #[command(flatten)]
    pub reports: ReportTiming,
}

#[derive(Args, Debug)]
pub struct RehearseArgs {
    /// The port to drive (default: the first port CMD listens on).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// How long CMD may take to start listening.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Speak HTTP/1.1: requests in flight and idle keep-alive connections (else plain TCP
    /// connections).
    #[arg(long)]
    pub http: bool,

    /// With --http, the path every request asks for. Point it at an endpoint that takes a
    /// while (a second or more), so that the requests sent just before the signal are
    /// still being handled when it comes.
    #[arg(long, value_name = "PATH", default_value = "/", requires = "http", value_parser = parse_path)]
    pub path: String,

    /// Connections of each kind to hold when the signal comes.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,

    /// The signal that asks CMD to stop.
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    pub signal: SignalArg,

    /// How long CMD may take to stop before SIGKILL.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub grace: Duration,

    /// Accept this finding (repeatable), e.g. --allow ACCEPTED_AFTER_SIGNAL.
    #[arg(long = "allow", value_name = "FINDING")]
    pub allow: Vec<String>,

    /// How long to keep counting refused clients after CMD exits.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    pub after_exit: Duration,

    /// Give up after SECS from CMD's start (default: 30 s more than --ready-timeout,
    /// --grace and --after-exit together): kill everything the rehearsal started, and
    /// fail.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub max_duration: Option<Duration>,

    /// Show CMD's output (the last 64 KiB of its stdout and of its stderr, on standard
    /// error) even when the rehearsal passes; it is always shown when it fails.
    #[arg(long)]
    pub show_output: bool,

    /// Print the shutdown report and the client counts as JSON lines.
    #[arg(long)]
    pub json: bool,

    /// When to colour the human format.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// The command to rehearse, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RehearseArgs {
    /// How long the whole rehearsal may take, from CMD's start.
    pub fn max_duration(&self) -> Duration {
        self.max_duration
            .unwrap_or(self.ready_timeout + self.grace + self.after_exit + Duration::from_secs(30))
    }
}

/// An origin-form request target: `/` and what follows, without spaces or line breaks.
fn parse_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("'{text}' does not start with /"));
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{text}' contains {c:?}: percent-encode it"));
    }
    Ok(text.to_string())
}

#[derive(Clone, Copy, Debug)]
pub struct SignalArg(pub i32);

fn parse_signal(text: &str) -> Result<SignalArg, String> {
    signals::parse(text).map(SignalArg)
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The log (NDJSON from `observer watch --json`); `-` for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print the reports as NDJSON instead of human-readable text.
    #[arg(long)]
    pub json: bool,

    /// When to colour the human format.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    #[command(flatten)]
    pub reports: ReportTiming,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResetLines {
    /// Refusals counted per refusing address per second (`tcp_refused`); other RSTs
    /// one `tcp_reset` line each.
    Summary,
    /// Every RST its own `tcp_reset` line.
    Each,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConnectionLines {
    /// A process's first 8 of each kind, then one line for the rest.
    Summary,
    /// Every one.
    Each,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// When standard output is a terminal and NO_COLOR is unset.
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Colour or not when forced to; None for auto.
    pub fn forced(self) -> Option<bool> {
        match self {
            ColorChoice::Auto => None,
            ColorChoice::Always => Some(true),
            ColorChoice::Never => Some(false),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SignalList(pub Vec<i32>);

fn parse_signal_list(text: &str) -> Result<SignalList, String> {
    signals::parse_list(text).map(SignalList)
}

/// Zero or more seconds.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(format!("expected zero or more seconds, not {text}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!(
            "the duration must be a positive number of seconds, not {text}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_comm(text: &str) -> Result<String, String> {
    match text.len() {
        0 => Err("the command name is empty".to_string()),
        1..=15 => Ok(text.to_string()),
        n => Err(format!(
            "'{text}' has {n} bytes; the kernel keeps only the first 15 of a command name, \
             so use '{}'",
            &text[..text.floor_char_boundary(15)]
        )),
    }
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
        return Err(format!(
            "the ring buffer must be a power of two from 4 to 1048576 KiB, not {kib}"
        ));
    }
    Ok(kib)
}

/// Shell completions for `shell`, generated from the CLI definition.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "observer",
        &mut out,
    );
    out
}

/// The man page (roff), generated from the CLI definition.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn completions_and_man_page_cover_every_subcommand() {
        let bash = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
        for word in [
            "watch",
            "report",
            "rehearse",
            "check",
            "--gate",
            "--after-exit",
        ] {
            assert!(
                bash.contains(word),
                "{word} missing from the bash completions"
            );
        }
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH observer"),
            "{}",
            &man[..80]
        );
        for word in ["watch", "report", "rehearse", "check"] {
            assert!(man.contains(word), "{word} missing from the man page");
        }
    }

    fn watch(args: &[&str]) -> Result<WatchArgs, String> {
        let mut argv = vec!["observer", "watch"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Watch(args),
            }) => Ok(*args),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_report_the_termination_signals() {
        let args = watch(&[]).unwrap();
        assert_eq!(args.signals.0, vec![15, 2, 3, 1, 9]);
        assert_eq!(args.ring_buffer_kib, 4096);
        assert!(!args.json && args.output.is_none() && args.duration.is_none());
    }

    #[test]
    fn parses_every_flag() {
        let args = watch(&[
            "--json",
            "--output",
            "/tmp/x",
            "--duration",
            "1.5",
            "--signals",
            "term,9",
            "--pid",
            "10",
            "--pid",
            "11",
            "--comm",
            "node",
            "--ring-buffer-kib",
            "64",
            "--color",
            "never",
            "--port",
            "8080",
        ])
        .unwrap();
        assert!(args.json);
        assert_eq!(args.duration, Some(Duration::from_millis(1500)));
        assert_eq!(args.signals.0, vec![15, 9]);
        assert_eq!(
            (args.pids, args.comms),
            (vec![10, 11], vec!["node".to_string()])
        );
        assert_eq!((args.ring_buffer_kib, args.color), (64, ColorChoice::Never));
        assert_eq!(args.ports, vec![8080]);
    }

    #[test]
    fn rejects_bad_values_with_a_reason() {
        for (args, reason) in [
            (
                &["--signals", "TERMINATE"][..],
                "unknown signal 'TERMINATE'",
            ),
            (&["--duration", "0"], "positive number of seconds"),
            (&["--duration", "-1"], "positive number of seconds, not -1"),
            (&["--duration", "soon"], "not a number of seconds"),
            (&["--pid", "0"], "0"),
            (&["--pid", "abc"], "invalid digit"),
            (&["--port", "70000"], "70000"),
            (&["--port", "0"], "0"),
            (&["--comm", "a-very-long-command-name"], "only the first 15"),
            (&["--ring-buffer-kib", "100"], "power of two"),
            (&["--color", "sometimes"], "sometimes"),
            (&["--bogus"], "--bogus"),
        ] {
            let error = watch(args).unwrap_err();
            assert!(error.contains(reason), "{args:?}: {error}");
        }
    }
}
