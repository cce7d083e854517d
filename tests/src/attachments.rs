//! Which BPF programs a process has attached, as the kernel tells it: the `prog_id` in
//! the fdinfo of each of its BPF link descriptors, named by BPF_OBJ_GET_INFO_BY_FD.
//! (Which tracepoint a perf link sits on is in fdinfo only since 6.6; the program's
//! name is there on every kernel observer supports.)
use std::os::fd::{FromRawFd, OwnedFd};

/// `bpf(2)` commands (include/uapi/linux/bpf.h).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct GetInfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` up to `name` (the kernel fills what fits in `info_len`).
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// The names of the programs process `pid` holds links for (attached programs), sorted,
/// one per link.
pub fn linked_programs(pid: u32) -> Vec<String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fdinfo: {e}"));
    let mut names: Vec<String> = fds
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter(|fdinfo| fdinfo.contains("link_type:"))
        .filter_map(|fdinfo| {
            let id = fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:"))?;
            Some(program_name(id.trim().parse().ok()?))
        })
        .collect();
    names.sort();
    names
}

fn program_name(prog_id: u32) -> String {
    let by_id = GetFdById {
        prog_id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a bpf_attr-sized argument that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &by_id as *const GetFdById,
            size_of::<GetFdById>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_PROG_GET_FD_BY_ID {prog_id}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor the kernel just gave us; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = ProgInfo::default();
    let query = GetInfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    // SAFETY: as above; `info` outlives the call and is `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &query as *const GetInfoByFd,
            size_of::<GetInfoByFd>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_OBJ_GET_INFO_BY_FD: {}",
        std::io::Error::last_os_error()
    );
    let len = info.name.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&info.name[..len]).into_owned()
}
