//! Loads the kernel programs with this kernel's layout and attaches them. The one place
//! that knows which program goes on which tracepoint, and when.
use anyhow::{Context, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, Program, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use observer_common::Settings;
use std::{
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    kernel::exit_stage::ExitStages,
    kernel::layout::KernelLayout,
    kernel::tracepoints::{
        INET_SOCK_SET_STATE, SCHED_PROCESS_EXIT, SIGNAL_DELIVER, SIGNAL_GENERATE,
        SYS_ENTER_EXIT_GROUP, SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4, TCP_RECEIVE_RESET, TCP_SEND_RESET,
        Tracepoint,
    },
};

/// A kernel program, the tracepoints it belongs on, and when to attach it.
struct ProgramSpec {
    program: &'static str,
    tracepoints: Tracepoints,
    /// Whether this kernel gets it at all.
    wanted: fn(&KernelLayout) -> bool,
    /// Whether it stays attached, or only while some process is shutting down.
    shutdown_only: bool,
}

enum Tracepoints {
    /// Classic tracepoints: the program reads the record the kernel builds, at offsets
    /// from tracefs `format` files (the fields in [`crate::kernel::tracepoints`]).
    Classic(&'static [&'static Tracepoint]),
    /// A raw tracepoint: the program gets the tracepoint's `TP_PROTO` arguments and the
    /// kernel builds no record, so it is the cheaper attachment on hot paths.
    Raw(&'static Tracepoint),
    /// A BTF-typed raw tracepoint (`tp_btf`): as `Raw`, and the verifier knows the
    /// arguments' types, so the program reads struct members with plain loads instead of
    /// a helper call each.
    Typed(&'static Tracepoint),
}

const PROGRAMS: [ProgramSpec; 11] = [
    // Raw when BTF gave the task layout: the target task names its thread group exactly.
    ProgramSpec {
        program: "signal_generate",
        tracepoints: Tracepoints::Raw(&SIGNAL_GENERATE),
        wanted: |layout| layout.task.known != 0,
        shutdown_only: false,
    },
    ProgramSpec {
        program: "signal_gen_tp",
        tracepoints: Tracepoints::Classic(&[&SIGNAL_GENERATE]),
        wanted: |layout| layout.task.known == 0,
        shutdown_only: false,
    },
    ProgramSpec {
        program: "signal_deliver",
        tracepoints: Tracepoints::Classic(&[&SIGNAL_DELIVER]),
        wanted: |_| true,
        shutdown_only: false,
    },
    // Every exit on the host: typed with the kernel's own BTF, so that the exiting task's
    // members are plain loads, else the classic tracepoint.
    ProgramSpec {
        program: "process_exit",
        tracepoints: Tracepoints::Typed(&SCHED_PROCESS_EXIT),
        wanted: |layout| layout.task.typed != 0,
        shutdown_only: false,
    },
    ProgramSpec {
        program: "process_exit_tp",
        tracepoints: Tracepoints::Classic(&[&SCHED_PROCESS_EXIT]),
        wanted: |layout| layout.task.typed == 0,
        shutdown_only: false,
    },
    // Exit codes for status inference, needed only when BTF is missing.
    ProgramSpec {
        program: "exit_group_call",
        tracepoints: Tracepoints::Classic(&[&SYS_ENTER_EXIT_GROUP]),
        wanted: |layout| layout.btf_problem.is_some() && layout.exit_group.is_some(),
        shutdown_only: false,
    },
    // The hot path: typed when the running kernel's own BTF gave the socket layout it
    // reads addresses with, else the classic tracepoint, whose record carries them.
    ProgramSpec {
        program: "tcp_state",
        tracepoints: Tracepoints::Typed(&INET_SOCK_SET_STATE),
        wanted: |layout| layout.tcp.is_some() && hot_path_typed(layout),
        shutdown_only: false,
    },
    ProgramSpec {
        program: "tcp_state_tp",
        tracepoints: Tracepoints::Classic(&[&INET_SOCK_SET_STATE]),
        wanted: |layout| layout.tcp.is_some() && !hot_path_typed(layout),
        shutdown_only: false,
    },
    ProgramSpec {
        program: "tcp_send_reset",
        tracepoints: Tracepoints::Classic(&[&TCP_SEND_RESET]),
        wanted: |layout| layout.tcp.is_some(),
        shutdown_only: false,
    },
    ProgramSpec {
        program: "tcp_recv_reset",
        tracepoints: Tracepoints::Classic(&[&TCP_RECEIVE_RESET]),
        wanted: |layout| layout.tcp.is_some(),
        shutdown_only: false,
    },
    // Accepts after a termination signal, and the owners of the sockets accepted then;
    // needs the fd → sock walk, so BTF. Syscall tracepoints tax every syscall on the
    // host, so only while some process is shutting down.
    ProgramSpec {
        program: "sys_exit_accept",
        tracepoints: Tracepoints::Classic(&[&SYS_EXIT_ACCEPT4, &SYS_EXIT_ACCEPT]),
        wanted: |layout| {
            layout.sock.known != 0 && layout.tcp.as_ref().is_some_and(|tcp| tcp.accept.is_some())
        },
        shutdown_only: true,
    },
];

/// Whether `tcp_state` can attach as `tp_btf`: that needs the running kernel's own BTF,
/// and the socket layout from it.
fn hot_path_typed(layout: &KernelLayout) -> bool {
    layout.task.typed != 0 && layout.sock.known != 0
}

pub struct Probes {
    /// Dropping it detaches every program; the maps stay readable.
    ebpf: Option<Ebpf>,
    lost: PerCpuArray<MapData, u64>,
    out_of_scope_cgroups: HashMap<MapData, u64, u8>,
    /// The programs attached for the whole run.
    pub attached: Vec<&'static str>,
    /// Loaded, and attached only while some process is shutting down: with their links
    /// while they are.
    shutdown_only: Vec<(&'static ProgramSpec, Option<Links>)>,
    /// When they were last asked for.
    shutdown_asked: Option<Instant>,
    /// The thread closing the links of the last detach.
    detaching: Option<JoinHandle<()>>,
}

/// How long the shutdown-only programs stay attached after they were last asked for, so
/// that processes stopped one after another (a rolling restart) do not make them flap.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// How to detach a program from what it was attached to.
enum Links {
    Classic(Vec<TracePointLinkId>),
    Raw(RawTracePointLinkId),
    Typed(BtfTracePointLinkId),
}

impl Probes {
    /// Loads the programs and attaches those that stay attached; returns them with the
    /// ring buffer they fill.
    pub fn load(
        object: &[u8],
        layout: &KernelLayout,
        settings: Settings,
        ring_bytes: u32,
    ) -> Result<(Self, RingBuf<MapData>, ExitStages)> {
        let mut ebpf = load_object(object, layout, settings, ring_bytes)?;
        let mut attached = Vec::new();
        let mut shutdown_only = Vec::new();
        for spec in PROGRAMS.iter().filter(|spec| (spec.wanted)(layout)) {
            let context = || format!("program {}", spec.program);
            load_program(&mut ebpf, spec).with_context(context)?;
            if spec.shutdown_only {
                shutdown_only.push((spec, None));
            } else {
                attach(&mut ebpf, spec).with_context(context)?;
                attached.push(spec.program);
            }
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS missing")?)?;
        let exit_stages = ExitStages::map(
            ebpf.take_map("EXIT_STAGE")
                .context("map EXIT_STAGE missing")?,
        )?;
        let lost = PerCpuArray::try_from(ebpf.take_map("LOST").context("map LOST missing")?)?;
        let out_of_scope_cgroups = HashMap::try_from(
            ebpf.take_map("OUT_OF_SCOPE_CGROUPS")
                .context("map OUT_OF_SCOPE_CGROUPS missing")?,
        )?;
        let probes = Self {
            ebpf: Some(ebpf),
            lost,
            out_of_scope_cgroups,
            attached,
            shutdown_only,
            shutdown_asked: None,
            detaching: None,
        };
        Ok((probes, ring, exit_stages))
    }

    /// The programs attached only while some process is shutting down.
    pub fn shutdown_only(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.shutdown_only.iter().map(|(spec, _)| spec.program)
    }

    /// Attaches (`on`) the programs that run only while some process is shutting down,
    /// or detaches them once they have not been asked for in SHUTDOWN_LINGER.
    pub fn trace_shutdowns(&mut self, on: bool) -> Result<()> {
        if on {
            self.shutdown_asked = Some(Instant::now());
        } else if self
            .shutdown_asked
            .is_some_and(|at| at.elapsed() < SHUTDOWN_LINGER)
        {
            return Ok(());
        }
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(());
        };
        let mut closing = Vec::new();
        for (spec, links) in &mut self.shutdown_only {
            let context = || format!("program {}", spec.program);
            match (on, links.take()) {
                (true, None) => {
                    // A program cannot sit twice on one tracepoint: the last detach
                    // must be over. Until it is (about 170 ms), the attach waits for a
                    // later call (every drain) rather than the event loop: the signal
                    // that asked is to be enriched while its target lives.
                    if self.detaching.as_ref().is_some_and(|d| !d.is_finished()) {
                        continue;
                    }
                    if let Some(detaching) = self.detaching.take() {
                        let _ = detaching.join();
                    }
                    *links = Some(attach(ebpf, spec).with_context(context)?);
                }
                (false, Some(attached)) => {
                    closing.extend(take_links(ebpf, spec, attached).with_context(context)?);
                }
                (_, unchanged) => *links = unchanged,
            }
        }
        if !closing.is_empty() {
            // Unregistering a tracepoint waits for RCU grace periods (170 ms measured
            // for the syscall ones here), which the event loop must not sit through.
            self.detaching = Some(std::thread::spawn(move || drop(closing)));
        }
        Ok(())
    }

    /// Detaches every program: no new records arrive after this.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }

    /// Tells the programs to skip tasks in cgroup `cgroup_id` (effective only when loaded
    /// with `Settings::scope_filtered`).
    pub fn exclude_cgroup(&mut self, cgroup_id: u64) -> Result<()> {
        self.out_of_scope_cgroups
            .insert(cgroup_id, 1, 0)
            .context("updating OUT_OF_SCOPE_CGROUPS")
    }

    /// Records dropped so far (ring buffer full), summed over CPUs.
    pub fn lost_total(&self) -> Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }
}

/// What `observer check` learns of one program.
pub struct Tried {
    pub program: &'static str,
    /// Its tracepoints, or why it failed to load or attach.
    pub attached: Result<String>,
}

/// Loads and attaches each program this kernel wants on its own, then detaches them all;
/// for `observer check`.
pub fn try_each(object: &[u8], layout: &KernelLayout, settings: Settings) -> Vec<Tried> {
    let mut ebpf = match load_object(object, layout, settings, 4096) {
        Ok(ebpf) => ebpf,
        Err(error) => {
            return vec![Tried {
                program: "object",
                attached: Err(error),
            }];
        }
    };
    PROGRAMS
        .iter()
        .filter(|spec| (spec.wanted)(layout))
        .map(|spec| {
            let mut described = spec.tracepoints.describe();
            if spec.shutdown_only {
                described.push_str(" (while a process shuts down)");
            }
            let attached = load_program(&mut ebpf, spec).and_then(|()| attach(&mut ebpf, spec));
            Tried {
                program: spec.program,
                attached: attached.map(|_| described),
            }
        })
        .collect()
}

/// The object, with this kernel's layout and the settings in its globals, loaded (its
/// maps created) but no program attached.
fn load_object(
    object: &[u8],
    layout: &KernelLayout,
    settings: Settings,
    ring_bytes: u32,
) -> Result<Ebpf> {
    {
        let settings = Settings {
            wakeup_bytes: u64::from(ring_bytes / 4),
            // The JIT runs the programs on this machine's CPUs.
            stores_in_order: u64::from(cfg!(any(target_arch = "x86_64", target_arch = "x86"))),
            ..settings
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global("SETTINGS", &settings, true)
            .override_global("SIGNAL_GENERATE_LAYOUT", &layout.signal_generate, true)
            .override_global("SIGNAL_DELIVER_LAYOUT", &layout.signal_deliver, true)
            .override_global("PROCESS_EXIT_LAYOUT", &layout.process_exit, true)
            .override_global("TASK_LAYOUT", &layout.task, true)
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("EXIT_STAGE", possible_cpus()? as u32);
        if let Some(exit_group) = &layout.exit_group {
            loader.override_global("EXIT_GROUP_LAYOUT", exit_group, true);
        }
        loader.override_global("SOCK_LAYOUT", &layout.sock, true);
        if let Some(tcp) = &layout.tcp {
            loader
                .override_global("INET_SOCK_SET_STATE_LAYOUT", &tcp.set_state, true)
                .override_global("TCP_SEND_RESET_LAYOUT", &tcp.send_reset, true)
                .override_global("TCP_RECEIVE_RESET_LAYOUT", &tcp.receive_reset, true);
            if let Some(accept) = &tcp.accept {
                loader.override_global("ACCEPT_LAYOUT", accept, true);
            }
        }
        loader.load(object).context("loading the eBPF object")
    }
}

/// CPUs the kernel may run a program on: one exit stage each.
fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, error)| anyhow::anyhow!("reading {path}: {error}"))
}

impl Tracepoints {
    /// As `observer check` prints it: `sock:inet_sock_set_state`, `tp_btf inet_sock_set_state`.
    fn describe(&self) -> String {
        match self {
            Self::Classic(tracepoints) => tracepoints
                .iter()
                .map(|tracepoint| tracepoint.path())
                .collect::<Vec<_>>()
                .join(", "),
            Self::Raw(tracepoint) => format!("raw_tp {}", tracepoint.name),
            Self::Typed(tracepoint) => format!("tp_btf {}", tracepoint.name),
        }
    }
}

fn program_of<'a>(ebpf: &'a mut Ebpf, spec: &ProgramSpec) -> Result<&'a mut Program> {
    ebpf.program_mut(spec.program).context("not in the object")
}

fn load_program(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<()> {
    let program = program_of(ebpf, spec)?;
    match spec.tracepoints {
        Tracepoints::Classic(_) => TryInto::<&mut TracePoint>::try_into(program)?.load()?,
        Tracepoints::Raw(_) => TryInto::<&mut RawTracePoint>::try_into(program)?.load()?,
        Tracepoints::Typed(tracepoint) => {
            // Parsed again, not kept from the object's load: this runs once, and the
            // parsed BTF is the largest thing observer ever holds.
            let btf = Btf::from_sys_fs().context("reading vmlinux BTF")?;
            TryInto::<&mut BtfTracePoint>::try_into(program)?.load(tracepoint.name, &btf)?
        }
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<Links> {
    let program = program_of(ebpf, spec)?;
    Ok(match spec.tracepoints {
        Tracepoints::Classic(tracepoints) => {
            let program: &mut TracePoint = program.try_into()?;
            let links = tracepoints.iter().map(|tracepoint| {
                program
                    .attach(tracepoint.category, tracepoint.name)
                    .with_context(|| format!("attaching to tracepoint {}", tracepoint.path()))
            });
            Links::Classic(links.collect::<Result<_>>()?)
        }
        Tracepoints::Raw(tracepoint) => {
            let program: &mut RawTracePoint = program.try_into()?;
            Links::Raw(
                program
                    .attach(tracepoint.name)
                    .with_context(|| format!("attaching to raw tracepoint {}", tracepoint.name))?,
            )
        }
        Tracepoints::Typed(tracepoint) => {
            let program: &mut BtfTracePoint = program.try_into()?;
            Links::Typed(
                program
                    .attach()
                    .with_context(|| format!("attaching to tp_btf {}", tracepoint.name))?,
            )
        }
    })
}

/// A program's links, taken from it: dropping them detaches it.
fn take_links(ebpf: &mut Ebpf, spec: &ProgramSpec, links: Links) -> Result<Vec<Box<dyn Send>>> {
    let program = program_of(ebpf, spec)?;
    let owned: Vec<Box<dyn Send>> = match links {
        Links::Classic(ids) => {
            let program: &mut TracePoint = program.try_into()?;
            let mut owned: Vec<Box<dyn Send>> = Vec::new();
            for id in ids {
                owned.push(Box::new(program.take_link(id)?));
            }
            owned
        }
        Links::Raw(id) => {
            let program: &mut RawTracePoint = program.try_into()?;
            vec![Box::new(program.take_link(id)?)]
        }
        Links::Typed(id) => {
            let program: &mut BtfTracePoint = program.try_into()?;
            vec![Box::new(program.take_link(id)?)]
        }
    };
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel keeps 15 bytes of a program's name (BPF_OBJ_NAME_LEN, with its NUL):
    /// a longer one would show cut, and two programs could show as one.
    #[test]
    fn program_names_fit_the_kernels_fifteen_bytes() {
        for spec in &PROGRAMS {
            assert!(spec.program.len() <= 15, "{}", spec.program);
        }
    }
}
