//! [`HostView`] backed by /proc and the cgroup v2 filesystem.
use std::{
    collections::HashMap,
    io::BufRead,
    ops::RangeInclusive,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    event::ContainerInfo,
    host::containers::{Resolver, Roots},
    pipeline::enrich::HostView,
};

/// A cgroup id missing from the index triggers a rescan at most this often.
const RESCAN_INTERVAL: Duration = Duration::from_millis(200);

pub struct ProcHost {
    /// Where cgroup2 is mounted, and the cgroup path of that mount's root.
    cgroup2: Option<(PathBuf, String)>,
    /// cgroup id (directory inode) → path.
    cgroup_index: HashMap<u64, String>,
    last_scan: Option<Instant>,
    /// How many times the index was rebuilt, or gained a group looked up by its id.
    index_changes: u64,
    /// A cgroup id was missing while rescans were rate-limited: the next periodic
    /// check rescans, so a group created just after a scan is not left unknown.
    rescan_deferred: bool,
    /// Container metadata, read from the runtimes' files once per container.
    containers: Resolver,
    /// Each network namespace's listening sockets (inode, local address), as read from
    /// its /proc/net/tcp and tcp6 at most LISTENERS_FRESH ago.
    listeners: HashMap<String, (Instant, Vec<(u64, String)>)>,
}

/// How long one read of a namespace's listening sockets serves. /proc/net/tcp lists
/// every socket of the namespace (a node drain of 3,000 servers with two clients each:
/// 15,000 lines, some ms to make and parse); read per signal target, it was most of the
/// time a drain took to process. Listeners opened since are known from the kernel.
const LISTENERS_FRESH: std::time::Duration = std::time::Duration::from_millis(100);
/// Network namespaces whose listeners are kept.
const LISTENER_NAMESPACES: usize = 256;

impl Default for ProcHost {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcHost {
    pub fn new() -> Self {
        Self {
            cgroup2: find_cgroup2_mount(),
            cgroup_index: HashMap::new(),
            last_scan: None,
            index_changes: 0,
            rescan_deferred: false,
            containers: Resolver::new(Roots::default()),
            listeners: HashMap::new(),
        }
    }

    /// The listening sockets (inode, local address) of `pid`'s network namespace.
    fn namespace_listeners(&mut self, pid: u32) -> &[(u64, String)] {
        let namespace = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|link| link.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("pid {pid}"));
        let fresh = self
            .listeners
            .get(&namespace)
            .is_some_and(|(read_at, _)| read_at.elapsed() < LISTENERS_FRESH);
        if !fresh {
            if self.listeners.len() >= LISTENER_NAMESPACES {
                self.listeners.clear();
            }
            let table: Vec<(u64, String)> = ["tcp", "tcp6"]
                .iter()
                .filter_map(|table| std::fs::File::open(format!("/proc/{pid}/net/{table}")).ok())
                .flat_map(|file| parse_listeners(std::io::BufReader::new(file)))
                .collect();
            self.listeners
                .insert(namespace.clone(), (Instant::now(), table));
        }
        &self.listeners[&namespace].1
    }

    /// Reads container metadata from `roots` (e.g. `--docker-root`).
    pub fn set_container_roots(&mut self, roots: Roots) {
        self.containers = Resolver::new(roots);
    }

    /// Every cgroup v2 directory: (id, path), as of the last scan.
    pub fn cgroups(&self) -> impl Iterator<Item = (u64, &str)> {
        self.cgroup_index
            .iter()
            .map(|(id, path)| (*id, path.as_str()))
    }

    /// Counts index rebuilds and groups looked up by id: a change means
    /// [`Self::cgroups`] may list new groups (the kernel's scope is synced on it).
    pub fn cgroup_index_changes(&self) -> u64 {
        self.index_changes
    }

    /// Whether a cgroup id was missed since the last scan while rescans were rate-limited.
    pub fn rescan_deferred(&self) -> bool {
        self.rescan_deferred
    }

    /// Rebuilds the cgroup index from the cgroup v2 filesystem.
    pub fn rescan(&mut self) {
        let Some((mount, root)) = &self.cgroup2 else {
            return;
        };
        self.last_scan = Some(Instant::now());
        self.index_changes += 1;
        self.rescan_deferred = false;
        self.cgroup_index.clear();
        let mut pending = vec![mount.clone()];
        while let Some(dir) = pending.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let relative = dir.strip_prefix(mount).unwrap_or(Path::new(""));
                self.cgroup_index
                    .insert(meta.ino(), join_cgroup(root, relative));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            pending.extend(
                entries
                    .flatten()
                    .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
    }
}

fn join_cgroup(root: &str, relative: &Path) -> String {
    let relative = relative.to_string_lossy();
    match (root.trim_end_matches('/'), relative.is_empty()) {
        ("", true) => "/".to_string(),
        (root, true) => root.to_string(),
        (root, false) => format!("{root}/{relative}"),
    }
}

/// Bounds on what one event carries from /proc, so that every line stays small whatever
/// the process: its listeners, its children (a supervisor may have thousands) and its
/// command line (the first bytes and arguments; the kernel's limit is 2 MiB).
const MAX_LISTENERS: usize = 64;
const MAX_CHILDREN: usize = 256;
const MAX_CMDLINE_ARGS: usize = 64;
const MAX_CMDLINE_BYTES: usize = 4096;

/// `/proc/PID/cmdline`'s NUL-separated arguments, at most [`MAX_CMDLINE_ARGS`] of them
/// and [`MAX_CMDLINE_BYTES`] in all (an argument cut short ends with "…").
fn bounded_cmdline(bytes: &[u8]) -> Vec<String> {
    let mut budget = MAX_CMDLINE_BYTES;
    let mut args = Vec::new();
    for arg in bytes.split(|&b| b == 0).filter(|arg| !arg.is_empty()) {
        if args.len() == MAX_CMDLINE_ARGS || budget == 0 {
            break;
        }
        let text = String::from_utf8_lossy(arg);
        if text.len() <= budget {
            budget -= text.len();
            args.push(text.into_owned());
        } else {
            let mut end = budget;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            args.push(format!("{}…", &text[..end]));
            budget = 0;
        }
    }
    args
}

impl HostView for ProcHost {
    fn tgid_of(&mut self, tid: u32) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))?
            .trim()
            .parse()
            .ok()
    }

    fn cgroup_of_process(&mut self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = parse_cgroup2_line(&text)?;
        // Index the group now: a container's is created after the last scan, and is
        // often removed before its processes' later records name it by id.
        if let Some((mount, "/")) = self.cgroup2.as_ref().map(|(m, r)| (m, r.as_str()))
            && let Ok(meta) = std::fs::metadata(mount.join(path.trim_start_matches('/')))
        {
            self.cgroup_index
                .entry(meta.ino())
                .or_insert_with(|| path.clone());
        }
        Some(path)
    }

    fn listening(&mut self, pid: u32) -> Vec<String> {
        let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                    .filter_map(|link| socket_inode(&link.to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        if inodes.is_empty() {
            return Vec::new();
        }
        // The process's own network namespace: /proc/PID/net.
        let mut listening: Vec<String> = self
            .namespace_listeners(pid)
            .iter()
            .filter(|(inode, _)| inodes.contains(inode))
            .map(|(_, local)| local.clone())
            .collect();
        listening.sort();
        listening.dedup();
        listening.truncate(MAX_LISTENERS);
        listening
    }

    fn children(&mut self, pid: u32) -> Vec<u32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        let mut children: Vec<u32> = tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        children.sort_unstable();
        children.truncate(MAX_CHILDREN);
        children
    }

    fn command(&mut self, pid: u32) -> (Option<String>, Vec<String>) {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|path| path.to_string_lossy().into_owned());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|bytes| bounded_cmdline(&bytes))
            .unwrap_or_default();
        (exe, cmdline)
    }

    fn parent(&mut self, pid: u32) -> Option<(u32, String)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "PID (COMM) STATE PPID …": COMM may hold spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
        Some((ppid, comm.trim_end().to_string()))
    }

    fn container_info(&mut self, cgroup: &str) -> Option<ContainerInfo> {
        self.containers.resolve(cgroup)
    }

    fn ns_pid(&mut self, pid: u32) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        parse_ns_pid(&status)
    }

    fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String> {
        if let Some(path) = self.cgroup_index.get(&cgroup_id) {
            return Some(path.clone());
        }
        if let Some((mount, root)) = &self.cgroup2
            && let Some(path) = cgroup_path_by_id(mount, root, cgroup_id)
        {
            self.cgroup_index.insert(cgroup_id, path.clone());
            self.index_changes += 1;
            return Some(path);
        }
        if self
            .last_scan
            .is_none_or(|at| at.elapsed() >= RESCAN_INTERVAL)
        {
            self.rescan();
        } else {
            // Rate-limited: the next scope sync rescans. (An id still missing after a
            // fresh scan is a group already gone: rescanning again would not find it.)
            self.rescan_deferred = true;
        }
        self.cgroup_index.get(&cgroup_id).cloned()
    }
}

/// The path of the cgroup whose id is `id`, opened by its file handle: a cgroup's id is
/// its kernfs node id, which is what a kernfs file handle holds (FILEID_KERNFS), so one
/// open_by_handle_at(2) finds a group created since the last scan, where waiting for a
/// rate-limited rescan lost the container of a process killed meanwhile. None if the
/// group is gone (or the handle is refused: the index still has its scans).
fn cgroup_path_by_id(mount: &Path, root: &str, id: u64) -> Option<String> {
    /// `struct file_handle` with its 8 bytes of `f_handle`: the kernfs node id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: libc::c_uint,
        handle_type: libc::c_int,
        id: u64,
    }
    const FILEID_KERNFS: libc::c_int = 0xfe;
    let mount_dir = std::fs::File::open(mount).ok()?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid directory fd and a file_handle whose f_handle holds handle_bytes.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_dir.as_raw_fd(),
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd this function owns.
    let group = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", group.as_raw_fd())).ok()?;
    let relative = path.strip_prefix(mount).ok()?;
    Some(join_cgroup(root, relative))
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// LISTEN sockets in a /proc/net/tcp or tcp6 table: (inode, `addr:port`). The kernel
/// lists every listener before any other socket (tcp_seq_start: the listening hash, then
/// the established one), so reading stops at the first other state: the rest, every
/// connection and TIME_WAIT socket on the host, can be 100k lines and ~100 ms to
/// generate, and is never asked for.
fn parse_listeners(table: impl BufRead) -> Vec<(u64, String)> {
    table
        .lines()
        .skip(1)
        .map_while(|line| {
            let line = line.ok()?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let listener = || {
                Some((
                    fields.get(9)?.parse().ok()?,
                    parse_proc_endpoint(fields[1])?,
                ))
            };
            Some(listener())
        })
        .flatten()
        .collect()
}

/// `0100007F:1F90` (IPv4, each 32-bit word in host order) → `127.0.0.1:8080`.
fn parse_proc_endpoint(text: &str) -> Option<String> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip: std::net::IpAddr = match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into(),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

/// The innermost namespace's pid from a /proc/PID/status `NSpid:` line (its last value).
fn parse_ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The ports connect() picks a local port from (`net.ipv4.ip_local_port_range`, which
/// IPv6 shares), as this host's network namespace sets them.
pub fn ephemeral_ports() -> Option<RangeInclusive<u16>> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
}

/// "32768\t60999\n" → 32768..=60999.
fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut ports = text.split_whitespace().map(|port| port.parse::<u16>().ok());
    match (ports.next()??, ports.next()??) {
        (low, high) if low <= high => Some(low..=high),
        _ => None,
    }
}

/// The cgroup v2 path in a /proc/PID/cgroup file (its `0::` line).
pub fn parse_cgroup2_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end().to_string())
}

/// Where cgroup v2 is mounted, if it is.
pub fn cgroup2_mount() -> Option<PathBuf> {
    find_cgroup2_mount().map(|(mount, _)| mount)
}

/// The cgroup2 mount point and its root, from /proc/self/mountinfo.
fn find_cgroup2_mount() -> Option<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&text)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup rw,… shared:9 - cgroup2 cgroup2 rw"
        let (fields, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = fields.split_whitespace();
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        Some((PathBuf::from(mount_point), root.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ephemeral_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32_768..=60_999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65_535));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("junk"), None);
    }

    #[test]
    fn a_command_line_is_bounded() {
        let huge: Vec<u8> = (0..1000)
            .flat_map(|i| format!("argument-{i}\0").into_bytes())
            .collect();
        let args = bounded_cmdline(&huge);
        assert_eq!(args.len(), MAX_CMDLINE_ARGS);
        let long = [vec![b'a'; 10_000], vec![0], b"next".to_vec()].concat();
        let args = bounded_cmdline(&long);
        assert_eq!(args.len(), 1);
        assert!(args[0].len() <= MAX_CMDLINE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 30 0:35 / /sys/fs/cgroup/unified rw shared:5 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mount(mountinfo),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_string()))
        );
        assert_eq!(
            parse_cgroup2_mount("30 25 0:26 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn reads_the_v2_line_of_a_proc_cgroup_file() {
        let text = "12:pids:/user.slice\n0::/system.slice/app.service\n";
        assert_eq!(
            parse_cgroup2_line(text).as_deref(),
            Some("/system.slice/app.service")
        );
        assert_eq!(parse_cgroup2_line("3:cpu:/\n"), None);
    }

    #[test]
    fn reads_listeners_from_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 not-an-inode
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
        // A malformed listener is skipped; reading stops at the first connection (the
        // kernel lists listeners first), so line 3 is never reached.
        assert_eq!(
            parse_listeners(tcp.as_bytes()),
            vec![(4242, "127.0.0.1:8080".to_string())]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_listeners(tcp6.as_bytes()),
            vec![(77, "[::1]:80".to_string())]
        );
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn reads_the_command_of_a_live_process() {
        let (exe, cmdline) = ProcHost::new().command(std::process::id());
        let me = std::env::current_exe().unwrap();
        assert_eq!(exe.as_deref(), me.to_str());
        assert_eq!(
            cmdline.first().map(String::as_str),
            std::env::args().next().as_deref()
        );
    }

    #[test]
    fn lists_the_listeners_of_a_live_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap().to_string();
        let mut host = ProcHost::new();
        assert!(host.listening(std::process::id()).contains(&local));
    }

    #[test]
    fn reads_the_innermost_namespace_pid() {
        assert_eq!(parse_ns_pid("Name:\tsh\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("NSpid:\t77\n"), Some(77));
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
    }

    #[test]
    fn joins_paths_under_the_mount_root() {
        assert_eq!(join_cgroup("/", Path::new("")), "/");
        assert_eq!(join_cgroup("/", Path::new("a/b.scope")), "/a/b.scope");
        assert_eq!(
            join_cgroup("/kubepods", Path::new("pod1")),
            "/kubepods/pod1"
        );
    }

    #[test]
    fn reads_this_process() {
        let mut host = ProcHost::new();
        let me = std::process::id();
        assert_eq!(host.tgid_of(me), Some(me));
        if let Some(path) = host.cgroup_of_process(me) {
            // The cgroup id index must agree with /proc about our own cgroup.
            let (mount, _) = host
                .cgroup2
                .clone()
                .expect("cgroup2 mounted if /proc shows 0::");
            let dir = mount.join(path.trim_start_matches('/'));
            if let Ok(meta) = std::fs::metadata(dir) {
                assert_eq!(host.cgroup_path(meta.ino()), Some(path));
            }
        }
    }
}
