//! `cargo xtask bench`: what observer costs and whether it loses events, measured side by
//! side with no tracer and with an equivalent bpftrace script, on this machine, now.
//! Prints a table and writes target/bench/results.json.
//!
//! 1. Throughput: wrk → nginx on loopback, with keep-alive connections (wrk's default,
//!    what most traffic looks like) and with a new connection per request (every request
//!    crosses the TCP hot path: the worst case), in many short alternating rounds. On a
//!    shared (virtual) machine noise only ever takes throughput away — another tenant's
//!    burst, a host interrupt — so each tracer is represented by its upper quartile (the
//!    third-best of the default ten rounds), its least disturbed runs, and compared with no
//!    tracer's. The same statistic between no tracer's odd and even rounds is printed as
//!    the resolution: how far apart two identical setups read. An empty program on
//!    `inet_sock_set_state`, observer's per-connection tracepoint, runs in each round as
//!    the floor: what tracing that tracepoint costs before any program logic. That floor
//!    is also measured finely: loopback connections on one CPU in slices tens of
//!    milliseconds long, the empty program attached for every other slice.
//! 2. Kernel cost per program: mean ns per run from kernel.bpf_stats_enabled, idle and
//!    under the new-connection load, and what all programs together take per request
//!    and as a share of the machine's CPU. The empty program runs beside them: its mean
//!    is what the stats' own clock reads add to every program's, subtracted for the net.
//! 3. Loss: a burst of process exits with SIGTERMs mixed in, and a burst of refused
//!    connections (two RSTs each), against what observer reported.
//! 4. observer's own CPU (% of one core) and peak RSS in each of those.
//! 5. Storm cost: mean ns per run of every program, observer's and the bpftrace peer's
//!    (which reads the same facts: an exit's status as waitpid() sees it and its parent,
//!    a signal's number and target), under an exit storm and a signal storm, with stats
//!    on, and the ratio of their total BPF time; first the floor there, empty programs
//!    on the same three tracepoints.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::empty_program::{self, EmptyProgram};

const PORT: u16 = 18_090;
const LOAD_SECS: u64 = 3;
/// Between a tracer saying it is ready and the measurement. This VM runs faster after a
/// pause than right after a burst (a null tracer read 105–107% of no tracer when its run
/// followed 3 s of idling and no tracer's 0.6 s), and tracers start with a burst of their
/// own (BTF, verification; bpftrace compiles): every run, no tracer's too, waits this
/// long first.
const SETTLE: Duration = Duration::from_secs(2);
const EXITS_PER_SEC: u64 = 5_000;
const CONNECTS_PER_SEC: u64 = 20_000;
const BURST_SECS: u64 = 2;
/// observer's per-connection tracepoint, where the empty program measures the floor.
const HOT_TRACEPOINT: &std::ffi::CStr = c"inet_sock_set_state";
/// Pairs of 2,000-connection slices in the floor measurement: about 3 s of them.
const FLOOR_PAIRS: usize = 40;

/// The bpftrace peer: the same tracepoints, filtered the way observer filters them, each
/// event printed (to a file).
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:signal:signal_generate /args->sig == 1 || args->sig == 2 || args->sig == 3 || args->sig == 9 || args->sig == 15/ { printf("signal %d %d %d %d %s\n", pid, args->pid, args->sig, args->result, comm); }
tracepoint:signal:signal_deliver /args->sig == 1 || args->sig == 2 || args->sig == 3 || args->sig == 9 || args->sig == 15/ { printf("deliver %d %d %d\n", pid, tid, args->sig); }
tracepoint:sched:sched_process_exit /args->group_dead/ { $s = curtask->signal; printf("exit %d %d %d %s\n", pid, curtask->real_parent->tgid, ($s->flags & 4) ? $s->group_exit_code : curtask->group_leader->exit_code, comm); }
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && (args->newstate == 10 || args->oldstate == 10)/ { printf("listen %d %d\n", pid, args->sport); }
tracepoint:tcp:tcp_send_reset { printf("rst sent %d %d\n", pid, args->reason); }
tracepoint:tcp:tcp_receive_reset { printf("rst received %d %d\n", pid, args->sport); }
tracepoint:syscalls:sys_exit_accept4 /args->ret >= 0/ { @accepts[pid] = count(); }
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tracer {
    None,
    /// An empty program on observer's per-connection tracepoint: the floor any tracer of
    /// it starts from.
    EmptyProgram,
    Observer,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::EmptyProgram => "empty prog",
            Tracer::Observer => "observer",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// A running tracer and how to read its cost.
struct Running {
    child: Option<Child>,
    empty_program: Option<EmptyProgram>,
    started: Instant,
    cpu_ticks_at_start: u64,
}

impl Running {
    fn start(tracer: Tracer, observer: &Path, dir: &Path, extra: &[&str]) -> Result<Self> {
        let empty_program = match tracer {
            Tracer::EmptyProgram => Some(empty_program::attach(HOT_TRACEPOINT)?),
            _ => None,
        };
        let child = match tracer {
            Tracer::None | Tracer::EmptyProgram => None,
            Tracer::Observer => {
                let log = dir.join("observer.err");
                // observer appends to --output: each run starts from an empty file, so
                // counts are this run's only.
                let output = dir.join("observer.ndjson");
                match fs::remove_file(&output) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error).context("removing the previous observer.ndjson");
                    }
                    _ => {}
                }
                let mut child = Command::new(observer)
                    .args(["watch", "--json", "--output"])
                    .arg(&output)
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(fs::File::create(&log)?)
                    .spawn()
                    .context("starting observer")?;
                wait_for_text(&log, "observer: watching", &mut child)?;
                Some(child)
            }
            Tracer::Bpftrace => {
                let script = dir.join("peer.bt");
                fs::write(&script, BPFTRACE_SCRIPT)?;
                let out = dir.join("bpftrace.out");
                let mut child = Command::new("bpftrace")
                    .arg(&script)
                    .stdout(fs::File::create(&out)?)
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace")?;
                wait_for_text(&out, "Attaching", &mut child)?;
                Some(child)
            }
        };
        let cpu_ticks_at_start = child.as_ref().map_or(0, |c| cpu_ticks(c.id()));
        Ok(Self {
            child,
            empty_program,
            started: Instant::now(),
            cpu_ticks_at_start,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it (SIGINT, as a user would); returns (CPU % of one core, peak RSS MiB).
    fn stop(mut self) -> Result<(f64, f64)> {
        // An empty program has no process to stop: it detaches here.
        drop(self.empty_program.take());
        let Some(mut child) = self.child.take() else {
            return Ok((0.0, 0.0));
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let ticks = cpu_ticks(child.id()) - self.cpu_ticks_at_start;
        let rss = peak_rss_mib(child.id());
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait()?;
        ensure!(status.success(), "tracer exited with {status}");
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((100.0 * ticks as f64 / ticks_per_sec / elapsed, rss))
    }
}

fn wait_for_text(path: &Path, text: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if fs::read_to_string(path).unwrap_or_default().contains(text) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{} exited ({status}) before it was ready", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} never said {text:?}", path.display())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // After the comm: state is field 3, utime 14, stime 15 (1-based) → indices 11, 12.
    fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Nginx {
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path) -> Result<Self> {
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; server {{ listen 127.0.0.1:{PORT}; \
                 location / {{ return 200 \"ok\\n\"; }} }} }}\n",
                dir = dir.display()
            ),
        )?;
        crate::run(Command::new("nginx").arg("-c").arg(&conf))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
    }
}

#[derive(Clone, Copy)]
enum Connections {
    KeepAlive,
    PerRequest,
}

/// Requests per second wrk achieved.
fn wrk_rps(secs: u64, connections: Connections) -> Result<f64> {
    let mut wrk = Command::new("wrk");
    wrk.args(["-t1", "-c32", &format!("-d{secs}s")]);
    if let Connections::PerRequest = connections {
        wrk.args(["-H", "Connection: close"]);
    }
    let output = wrk
        .arg(format!("http://127.0.0.1:{PORT}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// Per program (bpftool names, ≤ 15 characters): (run_time_ns, run_cnt).
fn bpf_stats() -> Result<BTreeMap<String, (u64, u64)>> {
    bpf_stats_where(|_| true)
}

/// The ids of the BPF programs process `pid` holds (its fdinfo's `prog_id`): another
/// tracer on the host may load programs of the same names.
fn programs_of(pid: u32) -> std::collections::BTreeSet<u64> {
    fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| fs::read_to_string(entry.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// As `bpf_stats`, for the programs whose id `wanted` accepts.
fn bpf_stats_where(wanted: impl Fn(u64) -> bool) -> Result<BTreeMap<String, (u64, u64)>> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()?;
    let programs: Value = serde_json::from_slice(&output.stdout).context("bpftool's JSON")?;
    Ok(programs
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|p| {
                    matches!(
                        p["type"].as_str(),
                        Some("tracepoint" | "raw_tracepoint" | "tracing")
                    ) && p["id"].as_u64().is_some_and(&wanted)
                })
                .filter_map(|p| {
                    Some((
                        p["name"].as_str()?.to_string(),
                        (
                            p["run_time_ns"].as_u64().unwrap_or(0),
                            p["run_cnt"].as_u64().unwrap_or(0),
                        ),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A program's runs between two snapshots, and their mean ns (None without runs).
fn runs_and_mean(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    name: &str,
) -> Option<(u64, Option<f64>)> {
    let (t1, c1) = after.get(name)?;
    let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
    let runs = c1.saturating_sub(c0);
    Some((runs, (runs > 0).then(|| (t1 - t0) as f64 / runs as f64)))
}

/// Mean ns per run of each of observer's programs between two snapshots.
fn cost(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, Value> {
    // The kernel keeps 15 bytes of a name; observer's programs' names fit.
    const OURS: [&str; 11] = [
        "signal_generate",
        "signal_gen_tp",
        "signal_deliver",
        "process_exit",
        "process_exit_tp",
        "tcp_state",
        "tcp_state_tp",
        "tcp_send_reset",
        "tcp_recv_reset",
        "sys_exit_accept",
        "exit_group_call",
    ];
    OURS.iter()
        .filter_map(|name| {
            let (runs, ns) = runs_and_mean(before, after, name)?;
            Some((name.to_string(), json!({"runs": runs, "mean_ns": ns})))
        })
        .collect()
}

/// Runs `measure` under each tracer in turn, `rounds` times, rotating the order so that
/// drift in the machine spreads evenly; `stopped` gets each tracer's (CPU %, peak RSS).
fn alternate(
    observer: &Path,
    dir: &Path,
    rounds: usize,
    unit: &str,
    mut measure: impl FnMut() -> Result<f64>,
    mut stopped: impl FnMut(Tracer, (f64, f64)),
) -> Result<BTreeMap<Tracer, Vec<f64>>> {
    let order = [
        Tracer::None,
        Tracer::EmptyProgram,
        Tracer::Observer,
        Tracer::Bpftrace,
    ];
    let mut values: BTreeMap<Tracer, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for offset in 0..order.len() {
            let tracer = order[(round + offset) % order.len()];
            let running = Running::start(tracer, observer, dir, &[])?;
            std::thread::sleep(SETTLE);
            let value = measure()?;
            stopped(tracer, running.stop()?);
            values.entry(tracer).or_default().push(value);
            eprintln!(
                "bench: round {} {:<10} {value:>10.1} {unit}",
                round + 1,
                tracer.name()
            );
        }
    }
    Ok(values)
}

/// Which way a measure improves.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// The value of the least disturbed runs: the upper quartile of values that noise only
/// lowers (throughput), the lower quartile of those it only raises (time).
fn least_disturbed(values: &[f64], better: Better) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if let Better::Higher = better {
        sorted.reverse();
    }
    sorted[sorted.len() / 4]
}

/// Prints each tracer's least disturbed value and its ratio to no tracer's, with the
/// median and range of the rounds' own ratios (each against the no-tracer run of the same
/// round), and the resolution: no tracer's odd rounds against its even ones. Returns
/// them as JSON.
fn side_by_side(unit: &str, better: Better, values: &BTreeMap<Tracer, Vec<f64>>) -> Value {
    let base = &values[&Tracer::None];
    let base_value = least_disturbed(base, better);
    let quartile = match better {
        Better::Higher => "upper",
        Better::Lower => "lower",
    };
    println!("(each tracer's {quartile} quartile of its rounds, and its ratio to no tracer's)");
    println!(
        "{:<12} {:>12} {:>9} {:>14} {:>16}",
        "tracer", unit, "ratio", "median ratio", "round ratios"
    );
    let mut table = serde_json::Map::new();
    for (tracer, runs) in values {
        let value = least_disturbed(runs, better);
        let mut ratios: Vec<f64> = runs.iter().zip(base).map(|(v, b)| v / b).collect();
        let median = median(&mut ratios);
        let (low, high) = (ratios[0], ratios[ratios.len() - 1]);
        println!(
            "{:<12} {value:>12.1} {:>8.1}% {:>13.1}% {:>7.1}–{:.1}%",
            tracer.name(),
            100.0 * value / base_value,
            100.0 * median,
            100.0 * low,
            100.0 * high
        );
        table.insert(
            tracer.name().to_string(),
            json!({"runs": runs, "least_disturbed": value, "ratio": value / base_value,
                   "median_round_ratio": median, "round_ratios": ratios}),
        );
    }
    let rounds_of =
        |parity: usize| -> Vec<f64> { base.iter().skip(parity).step_by(2).copied().collect() };
    let resolution =
        least_disturbed(&rounds_of(0), better) / least_disturbed(&rounds_of(1), better);
    println!(
        "resolution: no tracer's odd rounds read {:.1}% of its even ones",
        100.0 * resolution
    );
    table.insert("resolution".into(), json!(resolution));
    Value::Object(table)
}

/// Mean ns of one getppid() over many calls.
fn syscall_ns() -> f64 {
    const CALLS: u32 = 2_000_000;
    let start = Instant::now();
    for _ in 0..CALLS {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// Mean ns of one loopback TCP connection's whole life, both ends in this thread:
/// connect, accept, a byte each way, then the server closes first as nginx does for
/// `Connection: close` — every state change observer's hot path sees, on both ends.
fn connections(listener: &TcpListener, count: u32) -> Result<f64> {
    let address = listener.local_addr()?;
    let mut byte = [0u8; 1];
    let start = Instant::now();
    for _ in 0..count {
        let mut client = TcpStream::connect(address).context("connecting on loopback")?;
        let (mut server, _) = listener.accept()?;
        client.write_all(b"q")?;
        server.read_exact(&mut byte)?;
        server.write_all(b"a")?;
        client.read_exact(&mut byte)?;
        drop(server);
        drop(client);
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(count))
}

/// What tracing `inet_sock_set_state` at all costs a connection: `connections` on one
/// CPU in short slices, the empty program attached for every other one. This VM drifts
/// by 10–50% within seconds, so alternating rounds of whole tracers seconds apart cannot
/// resolve a percent; slices tens of milliseconds apart, paired and in alternating
/// order, can. Returns ns per connection untraced, and the median extra ns per pair.
fn connection_floor(pairs: usize) -> Result<(f64, f64)> {
    const PER_SLICE: u32 = 2_000;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_this_thread_to_cpu(0)?;
                let listener = TcpListener::bind("127.0.0.1:0")?;
                // TIME_WAIT sockets to their plateau: until then connect() finds free
                // ports faster.
                connections(&listener, 30_000)?;
                let mut untraced = Vec::with_capacity(pairs);
                let mut extra = Vec::with_capacity(pairs);
                for pair in 0..pairs {
                    let slice = |traced: bool| -> Result<f64> {
                        let _attached = traced
                            .then(|| empty_program::attach(HOT_TRACEPOINT))
                            .transpose()?;
                        connections(&listener, PER_SLICE)
                    };
                    let (bare, traced) = if pair % 2 == 0 {
                        let bare = slice(false)?;
                        (bare, slice(true)?)
                    } else {
                        let traced = slice(true)?;
                        (slice(false)?, traced)
                    };
                    untraced.push(bare);
                    extra.push(traced - bare);
                }
                Ok((median(&mut untraced), median(&mut extra)))
            })
            .join()
            .expect("the connection thread panicked")
    })
}

/// The middle value; sorts `values`.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Keeps the calling thread on one CPU, so that both ends of a loopback connection and
/// the softirq work between them run where the slice's clock runs.
fn pin_this_thread_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < 1024.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        result == 0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Forks `rate` children a second for `secs`, each exiting at once with a known code, or
/// (every 25th) waiting for a SIGTERM it has no handler for. Returns their pids.
fn exit_burst(rate: u64, secs: u64) -> Vec<(u32, i32)> {
    let mut children = Vec::new();
    let mut unreaped = Vec::new();
    let start = Instant::now();
    let total = rate * secs;
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let waits_for_term = i % 25 == 0;
        // SAFETY: the child only calls async-signal-safe functions before _exit.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe {
                if waits_for_term {
                    libc::pause();
                }
                libc::_exit((i % 200) as i32)
            },
            pid if pid > 0 => {
                if waits_for_term {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                children.push((
                    pid as u32,
                    if waits_for_term {
                        -15
                    } else {
                        (i % 200) as i32
                    },
                ));
            }
            _ => break,
        }
        // Reap as we go, so that the process table stays small; only the burst's own
        // children (observer is a child of this process too).
        unreaped.push(pid);
        unreaped
            .retain(|&pid| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
    }
    for pid in unreaped {
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    children
}

/// Connects `rate` times a second for `secs` to a port nobody listens on.
fn refused_burst(rate: u64, secs: u64) -> (u16, u64) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let total = rate * secs;
    let mut refused = 0;
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        if TcpStream::connect(target).is_err() {
            refused += 1;
        }
    }
    (port, refused)
}

pub fn run(root: &Path, rounds: usize) -> Result<()> {
    ensure!(
        crate::is_root(),
        "the benchmark loads eBPF programs and needs root"
    );
    ensure!(
        rounds >= 2,
        "--rounds {rounds}: the resolution compares odd and even rounds, so at least 2"
    );
    crate::install_apt(&["nginx", "wrk", "bpftrace", "bpftool"])?;
    crate::build_ebpf(root)?;
    crate::run(crate::host_cargo(root).args(["build", "--release", "--package", "observer"]))?;
    crate::mount_tracefs()?;
    let observer = root.join("target/release/observer");
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let mut results = serde_json::Map::new();

    let nginx = Nginx::start(&dir)?;
    std::thread::sleep(Duration::from_millis(300));
    wrk_rps(1, Connections::PerRequest)?; // warm up
    let bpf_stats_was = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
    // 1: throughput side by side, with BPF run-time stats off as in production (their
    // accounting costs two clock reads per program run, for any tracer).
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    let side_by_side = side_by_side_runs(&observer, &dir, rounds)?;
    // The per-connection tracepoint's floor, measured where noise cannot hide a percent.
    let floor = connection_floor(FLOOR_PAIRS)?;
    // 2: kernel cost per program, idle and under the same load, in a run of its own.
    let kernel = kernel_cost(&observer, &dir)?;
    fs::write("/proc/sys/kernel/bpf_stats_enabled", bpf_stats_was.trim())?;
    side_by_side.report(rounds, floor, &mut results);
    kernel.report(&mut results);
    let (cpu, rss) = side_by_side
        .own_cost
        .iter()
        .fold((0.0f64, 0.0f64), |(c, r), (c2, r2)| {
            (c.max(*c2), r.max(*r2))
        });
    results.insert(
        "observer_under_wrk".into(),
        json!({"cpu_percent_max": cpu, "peak_rss_mib": rss}),
    );
    drop(nginx);

    // 3 and 4: loss and observer's own cost under bursts.
    results.insert("loss".into(), loss(&observer, &dir)?);
    // 5: the exit and signal paths' cost, observer beside bpftrace.
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let storms = storm_cost(&observer, &dir);
    fs::write("/proc/sys/kernel/bpf_stats_enabled", bpf_stats_was.trim())?;
    results.insert("storm_cost".into(), storms?);
    let path = dir.join("results.json");
    let mut file = fs::File::create(&path)?;
    writeln!(
        file,
        "{}",
        serde_json::to_string_pretty(&Value::Object(results))?
    )?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// Throughput under wrk and the cost of a syscall, each tracer in turn.
struct SideBySide {
    throughput: BTreeMap<&'static str, BTreeMap<Tracer, Vec<f64>>>,
    syscall: BTreeMap<Tracer, Vec<f64>>,
    /// observer's (CPU %, peak RSS) in each of its runs.
    own_cost: Vec<(f64, f64)>,
}

fn side_by_side_runs(observer: &Path, dir: &Path, rounds: usize) -> Result<SideBySide> {
    let mut own_cost = Vec::new();
    let mut throughput = BTreeMap::new();
    for (name, connections) in [
        ("keep_alive", Connections::KeepAlive),
        ("new_connection_per_request", Connections::PerRequest),
    ] {
        let rps = alternate(
            observer,
            dir,
            rounds,
            "req/s",
            || wrk_rps(LOAD_SECS, connections),
            |tracer, cost| {
                if tracer == Tracer::Observer {
                    own_cost.push(cost);
                }
            },
        )?;
        throughput.insert(name, rps);
    }
    // What any syscall tracepoint costs every syscall on the host (both tracers attach
    // sys_exit_accept4): the kernel then takes the slow syscall path for every task.
    let syscall = alternate(
        observer,
        dir,
        rounds,
        "ns/getppid",
        || Ok(syscall_ns()),
        |_, _| {},
    )?;
    Ok(SideBySide {
        throughput,
        syscall,
        own_cost,
    })
}

impl SideBySide {
    /// Prints the side-by-side results and the connection floor, and adds them.
    fn report(
        &self,
        rounds: usize,
        (connection_untraced, connection_floor_extra): (f64, f64),
        results: &mut serde_json::Map<String, Value>,
    ) {
        let mut throughput_json = serde_json::Map::new();
        for (name, rps) in &self.throughput {
            println!(
                "\nThroughput: wrk → nginx, {}, {rounds} alternating rounds of {LOAD_SECS} s",
                name.replace('_', " ")
            );
            throughput_json.insert(name.to_string(), side_by_side("req/s", Better::Higher, rps));
        }
        println!("\nSyscall cost: getppid() in a loop, {rounds} alternating rounds");
        results.insert(
            "syscall_ns".into(),
            side_by_side("ns", Better::Lower, &self.syscall),
        );
        println!(
            "\nConnection floor: a loopback connection's life (connect, accept, a byte each \
             way, close) on one CPU, {FLOOR_PAIRS} pairs of slices without and with an empty \
             program on inet_sock_set_state"
        );
        println!(
            "untraced {connection_untraced:.0} ns per connection; the empty program adds \
             {connection_floor_extra:.0} ns ({:+.2}%), median of the pairs",
            100.0 * connection_floor_extra / connection_untraced
        );
        results.insert(
            "connection_floor".into(),
            json!({"untraced_ns": connection_untraced, "empty_program_extra_ns": connection_floor_extra}),
        );
        results.insert("throughput".into(), Value::Object(throughput_json));
    }
}

/// What observer's programs cost in the kernel, from kernel.bpf_stats_enabled.
struct KernelCost {
    cost: Value,
    /// The stats' own accounting per program run: an empty program's mean.
    accounting_ns: f64,
    load_rps: f64,
    keep_alive_rps: f64,
}

/// Kernel cost per program, idle and under load; with BPF run-time stats on.
fn kernel_cost(observer: &Path, dir: &Path) -> Result<KernelCost> {
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let running = Running::start(Tracer::Observer, observer, dir, &[])?;
    // Its mean per run is the accounting alone: two clock reads around a program.
    let accounting_probe = empty_program::attach(HOT_TRACEPOINT)?;
    let idle_start = bpf_stats()?;
    std::thread::sleep(Duration::from_secs(3));
    let idle_end = bpf_stats()?;
    let load_rps = wrk_rps(LOAD_SECS, Connections::PerRequest)?;
    let load_end = bpf_stats()?;
    let keep_alive_rps = wrk_rps(LOAD_SECS, Connections::KeepAlive)?;
    let keep_alive_end = bpf_stats()?;
    drop(accounting_probe);
    running.stop()?;
    let accounting_ns = runs_and_mean(&idle_end, &load_end, empty_program::NAME)
        .and_then(|(_, ns)| ns)
        .context("the empty program did not run under load")?;
    let per_program = json!({
        "idle": cost(&idle_start, &idle_end),
        "load": cost(&idle_end, &load_end),
        "keep_alive_load": cost(&load_end, &keep_alive_end),
        "accounting_ns_per_run": accounting_ns,
    });
    Ok(KernelCost {
        cost: per_program,
        accounting_ns,
        load_rps,
        keep_alive_rps,
    })
}

impl KernelCost {
    /// Prints the cost per program and the share of CPU time, and adds them.
    fn report(self, results: &mut serde_json::Map<String, Value>) {
        let kernel = &self;
        println!("\nKernel cost per program (kernel.bpf_stats_enabled), mean ns per run");
        println!(
            "{:<16} {:>10} {:>12} {:>10} {:>12}",
            "program", "idle ns", "idle runs", "load ns", "load runs"
        );
        println!(
            "(each mean includes the stats' own accounting: {:.0} ns, an empty \
             program's mean beside them)",
            kernel.accounting_ns
        );
        if let Some(load) = kernel.cost["load"].as_object() {
            for (name, value) in load {
                let idle = &kernel.cost["idle"][name];
                let show = |v: &Value| v.as_f64().map_or("-".to_string(), |ns| format!("{ns:.0}"));
                println!(
                    "{name:<16} {:>10} {:>12} {:>10} {:>12}",
                    show(&idle["mean_ns"]),
                    idle["runs"],
                    show(&value["mean_ns"]),
                    value["runs"]
                );
            }
        }
        // With the load CPU-bound, what the programs take is what throughput loses; stats
        // accounting inflates it a little, so this errs high.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut kernel_share = serde_json::Map::new();
        for (load, rps, label) in [
            ("load", kernel.load_rps, "new connection each"),
            ("keep_alive_load", kernel.keep_alive_rps, "keep-alive"),
        ] {
            let (program_ns, net_ns) = kernel.cost[load]
                .as_object()
                .into_iter()
                .flat_map(|programs| programs.values())
                .filter_map(|v| Some((v["mean_ns"].as_f64()?, v["runs"].as_f64()?)))
                .fold((0.0, 0.0), |(all, net), (mean, runs)| {
                    (
                        all + mean * runs,
                        net + (mean - kernel.accounting_ns).max(0.0) * runs,
                    )
                });
            let requests = rps * LOAD_SECS as f64;
            let (per_request, net_per_request) = (program_ns / requests, net_ns / requests);
            let share = program_ns / (LOAD_SECS as f64 * 1e9 * cores);
            println!(
                "all programs, {label}: {per_request:.0} ns per request ({net_per_request:.0} net \
                 of accounting), {:.2}% of {cores} cores' time",
                100.0 * share
            );
            kernel_share.insert(
                load.into(),
                json!({"ns_per_request": per_request, "net_ns_per_request": net_per_request,
                       "share_of_cpu": share, "cores": cores}),
            );
        }
        results.insert("kernel_cost".into(), self.cost);
        results.insert("kernel_share".into(), Value::Object(kernel_share));
    }
}

/// Bursts of exits and of refused connects under observer: what it reported of them,
/// lost, and its own cost.
fn loss(observer: &Path, dir: &Path) -> Result<Value> {
    let running = Running::start(Tracer::Observer, observer, dir, &["--after-exit", "0"])?;
    let observer_pid = running.pid().unwrap();
    let burst_start = Instant::now();
    let children = exit_burst(EXITS_PER_SEC, BURST_SECS);
    let exit_secs = burst_start.elapsed().as_secs_f64();
    let tcp_start = Instant::now();
    let (port, refused) = refused_burst(CONNECTS_PER_SEC, BURST_SECS);
    let tcp_secs = tcp_start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let (cpu, rss) = running.stop()?;
    let lines: Vec<Value> = fs::read_to_string(dir.join("observer.ndjson"))?
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let exits: std::collections::HashMap<u64, &Value> = lines
        .iter()
        .filter(|l| l["type"] == "exit")
        .filter_map(|l| Some((l["pid"].as_u64()?, l)))
        .collect();
    let exact = children
        .iter()
        .filter(|(pid, expected)| {
            exits.get(&(*pid as u64)).is_some_and(|e| {
                if *expected < 0 {
                    e["signal"] == -expected
                } else {
                    e["code"] == *expected
                }
            })
        })
        .count();
    let terms = children.iter().filter(|(_, e)| *e < 0).count();
    let term_signals = lines
        .iter()
        .filter(|l| l["type"] == "signal" && l["sender"]["pid"] == std::process::id())
        .count();
    let local = format!("127.0.0.1:{port}");
    // Refusals are counted into `tcp_refused` lines (`--resets each` would write a
    // `tcp_reset` for each).
    let one_by_one = lines
        .iter()
        .filter(|l| {
            l["type"] == "tcp_reset"
                && (l["local"] == local.as_str() || l["remote"] == local.as_str())
        })
        .count();
    let tallies: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "tcp_refused" && l["refused"] == local.as_str())
        .collect();
    let counted: u64 = tallies
        .iter()
        .map(|l| l["sent"].as_u64().unwrap_or(0) + l["received"].as_u64().unwrap_or(0))
        .sum();
    let resets = one_by_one as u64 + counted;
    let reset_lines = one_by_one + tallies.len();
    let lost: u64 = lines
        .iter()
        .filter(|l| l["type"] == "lost")
        .filter_map(|l| l["count"].as_u64())
        .sum();
    let events = lines.len() as f64;
    let busy = exit_secs + tcp_secs;
    println!("\nLoss: default ring buffer, observer pid {observer_pid}");
    println!(
        "  exits:   {} generated at {:.0}/s ({terms} by SIGTERM), {exact} reported with the exact status",
        children.len(),
        children.len() as f64 / exit_secs
    );
    println!("  signals: {terms} SIGTERMs sent, {term_signals} reported");
    println!(
        "  resets:  {refused} refused connects at {:.0}/s → {} RSTs expected, {resets} reported \
         in {reset_lines} lines",
        refused as f64 / tcp_secs,
        2 * refused
    );
    println!("  lost:    {lost}");
    println!(
        "  observer: {cpu:.1}% of one core over the bursts ({:.0} events/s), peak RSS {rss:.1} MiB",
        events / busy
    );
    Ok(json!({
        "exits_generated": children.len(), "exits_per_sec": children.len() as f64 / exit_secs,
        "exits_exact": exact, "sigterms_sent": terms, "sigterms_reported": term_signals,
        "refused_connects": refused, "connects_per_sec": refused as f64 / tcp_secs,
        "resets_expected": 2 * refused, "resets_reported": resets,
        "reset_lines": reset_lines, "lost": lost,
        "observer_cpu_percent": cpu, "events_per_sec": events / busy, "observer_peak_rss_mib": rss,
    }))
}

/// Exits in the exit storm, and SIGTERMs in the signal storm.
const STORM_EXITS: u64 = 3_000;
const STORM_SIGNALS: u32 = 3_000;

/// The exit and signal paths' BPF time under each tracer (stats on): every program that
/// ran, its mean ns per run, and the total, per storm; then observer's total over
/// bpftrace's. First the floor: empty programs on the three tracepoints, alone.
fn storm_cost(observer: &Path, dir: &Path) -> Result<Value> {
    let mut totals: BTreeMap<(&str, Tracer), f64> = BTreeMap::new();
    let mut per_tracer = serde_json::Map::new();
    println!("\nStorm cost: mean ns per run of each program, with stats on");
    per_tracer.insert("floor".into(), storm_floor()?);
    for tracer in [Tracer::Observer, Tracer::Bpftrace] {
        let running = Running::start(tracer, observer, dir, &[])?;
        let ours = programs_of(running.pid().context("the tracer has no process")?);
        let mut storms = serde_json::Map::new();
        for storm in STORMS {
            let (programs, total) = storm_programs(tracer.name(), storm, &ours)?;
            totals.insert((storm, tracer), total);
            storms.insert(
                storm.into(),
                json!({"programs": programs, "total_ns": total}),
            );
        }
        running.stop()?;
        per_tracer.insert(tracer.name().into(), Value::Object(storms));
    }
    let mut ratios = serde_json::Map::new();
    for storm in STORMS {
        let (ours, peer) = (
            totals[&(storm, Tracer::Observer)],
            totals[&(storm, Tracer::Bpftrace)],
        );
        let ratio = ours / peer;
        println!(
            "  {}: observer {:.0} µs of BPF, bpftrace {:.0} µs: {ratio:.2}×",
            storm.replace('_', " "),
            ours / 1e3,
            peer / 1e3
        );
        ratios.insert(storm.into(), json!(ratio));
    }
    per_tracer.insert("observer_over_bpftrace".into(), Value::Object(ratios));
    Ok(Value::Object(per_tracer))
}

const STORMS: [&str; 2] = ["exit_storm", "signal_storm"];

/// What any tracer of these tracepoints pays in each storm before its program does
/// anything: the dispatch and the stats' own clock reads, which on a cache the storm
/// empties are far from the hot path's ~30 ns.
fn storm_floor() -> Result<Value> {
    let mut storms = serde_json::Map::new();
    {
        let _floors = [
            (c"sched_process_exit", "floor_exit"),
            (c"signal_generate", "floor_sig_gen"),
            (c"signal_deliver", "floor_sig_del"),
        ]
        .map(|(tracepoint, name)| empty_program::attach_as(tracepoint, name))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        // Their links are this process's fds, and a link's fdinfo names its program.
        let floors = programs_of(std::process::id());
        for storm in STORMS {
            let (programs, _) = storm_programs("floor", storm, &floors)?;
            storms.insert(storm.into(), json!({ "programs": programs }));
        }
    }
    // Alone, in a storm of its own: the first clock read on a tracepoint waits for what
    // the traced path still has in flight (bpf_ktime_get_ns() reads the TSC after an
    // lfence), whichever program makes it.
    let _clock = empty_program::attach_reading_clock(c"sched_process_exit", "floor_exit_clk")?;
    let (programs, _) = storm_programs("floor", "exit_storm", &programs_of(std::process::id()))?;
    storms.insert(
        "exit_storm_clock_read".into(),
        json!({ "programs": programs }),
    );
    Ok(Value::Object(storms))
}

/// Runs `storm` and prints, for each of the programs `ids`, its runs and mean ns per
/// run; returns them and their total ns.
fn storm_programs(
    tracer: &str,
    storm: &str,
    ids: &std::collections::BTreeSet<u64>,
) -> Result<(serde_json::Map<String, Value>, f64)> {
    let stats = || bpf_stats_where(|id| ids.contains(&id));
    let before = stats()?;
    match storm {
        "exit_storm" => drop(exit_burst(STORM_EXITS, 1)),
        _ => signal_storm(STORM_SIGNALS)?,
    }
    let after = stats()?;
    let mut programs = serde_json::Map::new();
    let mut total = 0.0;
    for name in after.keys() {
        if let Some((runs, Some(mean))) = runs_and_mean(&before, &after, name) {
            println!(
                "  {tracer:<9} {:<13} {name:<16} {mean:>8.0} ns/run {runs:>8} runs",
                storm.replace('_', " ")
            );
            total += mean * runs as f64;
            programs.insert(name.clone(), json!({"runs": runs, "mean_ns": mean}));
        }
    }
    Ok((programs, total))
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// `count` SIGTERMs as fast as kill(2) goes to a child that handles them, then SIGKILL.
fn signal_storm(count: u32) -> Result<()> {
    // SAFETY: the child installs a handler and pauses; both are async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::signal(
                libc::SIGTERM,
                ignore_signal as *const () as libc::sighandler_t,
            );
            loop {
                libc::pause();
            }
        }
    }
    ensure!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    // Its handler is installed before the first SIGTERM (else the default action ends it).
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..count {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    Ok(())
}
