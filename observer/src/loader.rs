//! Loads the kernel programs with this kernel's layout and attaches them. The one place
//! that knows which program goes on which tracepoint, and when.
use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use observer_common::Settings;

use crate::layout::KernelLayout;

/// A kernel program and the tracepoint it belongs on.
struct ProgramSpec {
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    /// Whether to attach it on this kernel.
    wanted: fn(&KernelLayout) -> bool,
}

const PROGRAMS: [ProgramSpec; 5] = [
    ProgramSpec {
        program: "signal_generate",
        category: "signal",
        tracepoint: "signal_generate",
        wanted: |_| true,
    },
    ProgramSpec {
        program: "signal_deliver",
        category: "signal",
        tracepoint: "signal_deliver",
        wanted: |_| true,
    },
    ProgramSpec {
        program: "process_exit",
        category: "sched",
        tracepoint: "sched_process_exit",
        wanted: |_| true,
    },
    // Exact thread group of tgkill() targets; without syscall tracepoints, /proc is used.
    ProgramSpec {
        program: "tgkill_enter",
        category: "syscalls",
        tracepoint: "sys_enter_tgkill",
        wanted: |layout| layout.tgkill.is_some(),
    },
    // Exit codes for status inference, needed only when BTF is missing.
    ProgramSpec {
        program: "exit_group_enter",
        category: "syscalls",
        tracepoint: "sys_enter_exit_group",
        wanted: |layout| layout.btf_problem.is_some() && layout.exit_group.is_some(),
    },
];

pub struct Probes {
    /// Dropping it detaches every program; the maps stay readable.
    ebpf: Option<Ebpf>,
    lost: PerCpuArray<MapData, u64>,
    pub attached: Vec<&'static str>,
}

impl Probes {
    /// Loads and attaches the programs; returns them with the ring buffer they fill.
    pub fn load(
        object: &[u8],
        layout: &KernelLayout,
        settings: Settings,
        ring_bytes: u32,
    ) -> Result<(Self, RingBuf<MapData>)> {
        let mut loader = EbpfLoader::new();
        loader
            .override_global("SETTINGS", &settings, true)
            .override_global("SIGNAL_GENERATE_LAYOUT", &layout.signal_generate, true)
            .override_global("SIGNAL_DELIVER_LAYOUT", &layout.signal_deliver, true)
            .override_global("PROCESS_EXIT_LAYOUT", &layout.process_exit, true)
            .override_global("TASK_LAYOUT", &layout.task, true)
            .map_max_entries("EVENTS", ring_bytes);
        if let Some(tgkill) = &layout.tgkill {
            loader.override_global("TGKILL_LAYOUT", tgkill, true);
        }
        if let Some(exit_group) = &layout.exit_group {
            loader.override_global("EXIT_GROUP_LAYOUT", exit_group, true);
        }
        let mut ebpf = loader.load(object).context("loading the eBPF object")?;
        let mut attached = Vec::new();
        for spec in PROGRAMS.iter().filter(|spec| (spec.wanted)(layout)) {
            attach(&mut ebpf, spec).with_context(|| {
                format!(
                    "program {} on tracepoint {}:{}",
                    spec.program, spec.category, spec.tracepoint
                )
            })?;
            attached.push(spec.program);
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("map EVENTS missing")?)?;
        let lost = PerCpuArray::try_from(ebpf.take_map("LOST").context("map LOST missing")?)?;
        let probes = Self {
            ebpf: Some(ebpf),
            lost,
            attached,
        };
        Ok((probes, ring))
    }

    /// Detaches every program: no new records arrive after this.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }

    /// Records dropped so far (ring buffer full), summed over CPUs.
    pub fn lost_total(&self) -> Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }
}

fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(spec.program)
        .context("not in the object")?
        .try_into()?;
    program.load()?;
    program.attach(spec.category, spec.tracepoint)?;
    Ok(())
}
