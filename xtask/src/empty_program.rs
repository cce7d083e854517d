//! An empty eBPF program (`r0 = 0; exit`) on a raw tracepoint: the bench's floor, what
//! any tracer of that tracepoint costs before its program does anything (the kernel's
//! dispatch to BPF on every hit). Loaded with bpf(2) directly: two instructions need no
//! object file. A variant reads the clock first (`attach_reading_clock`): the floor of
//! any program that timestamps what it sees.
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `mov64 r0, 0` and `exit`, as the kernel reads `struct bpf_insn` (little-endian).
const EMPTY: [u64; 2] = [0xb7, 0x95];
/// `call bpf_ktime_get_ns` (helper 5, in the immediate's 32 bits), then as `EMPTY`.
const CLOCK_READ: [u64; 3] = [0x85 | (5 << 32), 0xb7, 0x95];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the kernel wants the rest
/// zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u8; 96],
}

/// `union bpf_attr` for BPF_RAW_TRACEPOINT_OPEN.
#[repr(C)]
struct RawTracepointOpenAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
    cookie: u64,
}

/// Attached while it lives: its link, which holds the program; dropping it detaches.
pub struct EmptyProgram {
    _link: OwnedFd,
}

fn bpf<T>(command: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, initialised bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel gave us and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Its name, as bpftool shows it.
pub const NAME: &str = "empty";

pub fn attach(tracepoint: &'static std::ffi::CStr) -> Result<EmptyProgram> {
    attach_as(tracepoint, NAME)
}

/// As `attach`, under another `name` (at most 15 bytes), to tell several apart.
pub fn attach_as(tracepoint: &'static std::ffi::CStr, name: &str) -> Result<EmptyProgram> {
    load_and_attach(tracepoint, name, &EMPTY)
}

/// A program that only reads the clock (bpf_ktime_get_ns), under `name`.
pub fn attach_reading_clock(
    tracepoint: &'static std::ffi::CStr,
    name: &str,
) -> Result<EmptyProgram> {
    load_and_attach(tracepoint, name, &CLOCK_READ)
}

fn load_and_attach(
    tracepoint: &'static std::ffi::CStr,
    name: &str,
    instructions: &[u64],
) -> Result<EmptyProgram> {
    let mut prog_name = [0u8; 16];
    anyhow::ensure!(
        name.len() < prog_name.len(),
        "program name {name:?} is too long"
    );
    prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let program = bpf(
        BPF_PROG_LOAD,
        &ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
            insn_cnt: instructions.len() as u32,
            insns: instructions.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            rest: [0; 96],
        },
    )
    .with_context(|| format!("loading raw_tp program {name}"))?;
    let link = bpf(
        BPF_RAW_TRACEPOINT_OPEN,
        &RawTracepointOpenAttr {
            name: tracepoint.as_ptr() as u64,
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(&program) as u32,
            _pad: 0,
            cookie: 0,
        },
    )
    .with_context(|| format!("attaching program {name} to raw tracepoint {tracepoint:?}"))?;
    Ok(EmptyProgram { _link: link })
}
