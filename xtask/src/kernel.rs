//! The privileged suites on other kernels: `cargo xtask test` runs them on every kernel
//! in [`KERNELS`] after the host's suites, `cargo xtask test --kernel 6.1` on those
//! named. Debian's cloud kernel of each series is downloaded (never installed) into a
//! cache outside the checkout, and booted under qemu with software emulation (KVM here is
//! nested and unusable for stock kernels) from an initramfs that carries busybox,
//! observer, the test binaries and the libraries they link, all at fixed paths under
//! [`VM_ROOT`]: nothing in the VM depends on where the checkout lives. Its /init mounts
//! what observer needs, runs each suite, prints one result line per suite on the serial
//! console, and powers off.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{install_apt, is_root, output_of, run};

/// Kernel series → the Debian (bookworm) package that depends on its newest cloud build.
pub const KERNELS: [(&str, &str); 2] = [
    ("6.1", "linux-image-cloud-amd64"),
    ("6.12", "linux-image-6.12-cloud-amd64"),
];
const VM_PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "cpio"];
/// Suites that need nothing but observer, the testee and [`HOST_BINARIES`]. Every other
/// suite starts something the VM lacks (Python, Node, Prometheus, logrotate, dockerd,
/// third-party servers; `reliability` for one test): README's Kernels section says which.
const VM_SUITES: [&str; 4] = ["signals_and_exits", "tcp", "watch_cli", "report_cli"];
/// Where everything the suites use lives inside the VM: the layout of a checkout
/// (`target/debug/{observer,testee,deps/SUITE}`, `tests/`, `docs/`), so that the tests
/// find the testee next to their own binary and the schema through OBSERVER_TESTS_DIR.
const VM_ROOT: &str = "/observer";
/// Binaries from the host, by their names in the VM's /bin: busybox, and from essential
/// packages (so always there) dash as `sh` (busybox's runs its own applets even where /bin
/// has the real command), util-linux's `setpriv` (busybox's has no `--bounding-set`) and
/// `unshare`.
const HOST_BINARIES: [(&str, &str); 4] = [
    ("/bin/busybox", "busybox"),
    ("/bin/dash", "sh"),
    ("/usr/bin/setpriv", "setpriv"),
    ("/usr/bin/unshare", "unshare"),
];
const BUSYBOX_APPLETS: [&str; 13] = [
    "mount", "ip", "poweroff", "kill", "sleep", "cat", "mkdir", "uname", "echo", "ls", "umount",
    "true", "false",
];
/// A boot takes a few seconds under TCG, the suites 4–6 minutes (up to twice that on a
/// busy machine); a hung guest must not hold CI.
const VM_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const RESULT_PREFIX: &str = "observer-kernel-result:";
/// Kernels are kept here between runs unless OBSERVER_KERNEL_CACHE names another place
/// (for other users: observer-kernels in $XDG_CACHE_HOME or ~/.cache).
const ROOT_KERNEL_CACHE: &str = "/var/cache/observer-kernels";

/// Runs the VM suites from `test_binaries` on each of `series`, all at once; fails if
/// any suite failed or did not report on any of them.
pub fn test(
    root: &Path,
    series: &[&str],
    observer: &Path,
    test_binaries: &[PathBuf],
) -> Result<()> {
    let packages: Vec<(&str, &str)> = series
        .iter()
        .map(|s| {
            KERNELS
                .iter()
                .find(|(known, _)| known == s)
                .copied()
                .with_context(|| {
                    format!("no kernel {s}: choose one of {:?}", KERNELS.map(|(s, _)| s))
                })
        })
        .collect::<Result<_>>()?;
    install_apt(&VM_PACKAGES)?;
    let suites: Vec<(&str, &Path)> = VM_SUITES
        .iter()
        .map(|suite| {
            test_binaries
                .iter()
                .find(|binary| suite_name(binary) == *suite)
                .map(|binary| (*suite, binary.as_path()))
                .with_context(|| format!("no test binary for the VM suite {suite}"))
        })
        .collect::<Result<_>>()?;
    let kernels: Vec<(&str, PathBuf)> = packages
        .iter()
        .map(|(series, meta)| Ok((*series, fetch_kernel(series, meta)?)))
        .collect::<Result<_>>()?;
    let initramfs = build_initramfs(root, observer, &suites)?;
    // All kernels at once: each VM keeps about one core busy (the suites run one test at
    // a time), so on 2 cores two VMs side by side finish sooner than one after the other.
    let outcomes: Vec<(&str, Result<u64>, Duration, PathBuf)> = std::thread::scope(|scope| {
        let runs: Vec<_> = kernels
            .iter()
            .map(|(series, kernel)| {
                let (initramfs, suites) = (&initramfs, &suites);
                scope.spawn(move || {
                    let started = Instant::now();
                    let log = root.join(format!("target/kernels/{series}.log"));
                    let outcome =
                        boot(series, kernel, initramfs, &log).and_then(|boot| boot.check(suites));
                    (*series, outcome, started.elapsed(), log)
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a VM's thread panicked"))
            .collect()
    });
    let mut failures = Vec::new();
    for (series, outcome, took, log) in outcomes {
        match outcome {
            Ok(tests) => eprintln!(
                "xtask: {series}: every VM suite passed, {tests} tests in {} s",
                took.as_secs()
            ),
            Err(error) => {
                eprintln!(
                    "xtask: {series}: {error:#}, after {} s (serial log: {})",
                    took.as_secs(),
                    log.display()
                );
                failures.push(format!("{series}: {error:#}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "VM suites failed:\n  {}",
        failures.join("\n  ")
    );
    Ok(())
}

/// `target/debug/deps/tcp-4ea3…` → `tcp`.
fn suite_name(binary: &Path) -> &str {
    let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.rsplit_once('-').map_or(name, |(suite, _)| suite)
}

fn kernel_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("OBSERVER_KERNEL_CACHE") {
        return dir.into();
    }
    if is_root() {
        return ROOT_KERNEL_CACHE.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("observer-kernels")
}

/// The series' newest cloud kernel as apt's lists name it, from the cache
/// (`CACHE/SERIES/PACKAGE/vmlinuz`) or else downloaded and extracted into it. Lists
/// that are missing, or name a package the mirror no longer has, are updated once.
fn fetch_kernel(series: &str, meta: &str) -> Result<PathBuf> {
    let dir = kernel_cache().join(series);
    let mut updated = false;
    loop {
        let package = match kernel_package(meta) {
            Some(package) => package,
            None if !updated => {
                apt_update()?;
                updated = true;
                continue;
            }
            None => bail!("apt-cache names no kernel image for {meta}"),
        };
        let vmlinuz = dir.join(&package).join("vmlinuz");
        if vmlinuz.is_file() {
            eprintln!("xtask: {series}: {package}, cached in {}", dir.display());
            return Ok(vmlinuz);
        }
        match download_kernel(&dir, &package, &vmlinuz) {
            Ok(()) => {
                prune_cache(&dir, &package);
                return Ok(vmlinuz);
            }
            Err(error) if !updated => {
                eprintln!("xtask: {error:#}; updating apt's lists and trying again");
                apt_update()?;
                updated = true;
            }
            Err(error) => return Err(error),
        }
    }
}

fn apt_update() -> Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("updating apt's lists (as root) to find Debian's kernels")
}

/// `linux-image-cloud-amd64` → `linux-image-6.1.0-57-cloud-amd64`.
fn kernel_package(meta: &str) -> Option<String> {
    output_of(Command::new("apt-cache").args(["depends", meta]))?
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_string)
}

/// Downloads `package` and keeps only its vmlinuz, renamed into place when complete.
fn download_kernel(dir: &Path, package: &str, vmlinuz: &Path) -> Result<()> {
    let work = dir.join(format!(".download-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)
        .with_context(|| format!("creating the kernel cache {}", work.display()))?;
    let result = download_into(&work, dir, package, vmlinuz);
    let _ = fs::remove_dir_all(&work);
    result.with_context(|| format!("fetching {package}"))
}

/// `download_kernel` in the scratch directory `work`.
fn download_into(work: &Path, dir: &Path, package: &str, vmlinuz: &Path) -> Result<()> {
    eprintln!("xtask: downloading {package} into {}", dir.display());
    let mut download = Command::new("apt-get");
    download.arg("download").arg("-qq").current_dir(work);
    if is_root() {
        // apt's _apt user cannot write to a cache that only root may write to.
        download.args(["-o", "APT::Sandbox::User=root"]);
    }
    run(download.arg(package))?;
    let deb = fs::read_dir(work)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    // Only ./boot/vmlinuz-*, not the package's hundred MB of modules.
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*'"#)
        .arg("sh")
        .arg(&deb)
        .arg(work))?;
    let image = fs::read_dir(work.join("boot"))?
        .flatten()
        .map(|entry| entry.path())
        .next()
        .context("the package has no boot/vmlinuz-*")?;
    fs::create_dir_all(vmlinuz.parent().context("vmlinuz has a parent")?)?;
    fs::rename(&image, vmlinuz)?;
    Ok(())
}

/// Removes the series' other cached kernels (superseded builds) once `package` is there.
fn prune_cache(dir: &Path, package: &str) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name() != package && path.join("vmlinuz").is_file() {
            eprintln!("xtask: removing the superseded {}", path.display());
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Writes the initramfs (an uncompressed newc cpio) into target/kernels; returns its path.
fn build_initramfs(root: &Path, observer: &Path, suites: &[(&str, &Path)]) -> Result<PathBuf> {
    let kernels = root.join("target/kernels");
    let staging = kernels.join("initramfs");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", staging.join("bin").join(applet))?;
    }
    for (binary, name) in HOST_BINARIES {
        copy_with_libraries(Path::new(binary), &staging, &Path::new("/bin").join(name))?;
    }
    let vm_root = Path::new(VM_ROOT);
    let vm_debug = vm_root.join("target/debug");
    let vm_observer = vm_debug.join("observer");
    copy_with_libraries(observer, &staging, &vm_observer)?;
    copy_with_libraries(
        &observer.with_file_name("testee"),
        &staging,
        &vm_debug.join("testee"),
    )?;
    for (suite, binary) in suites {
        copy_with_libraries(binary, &staging, &vm_debug.join("deps").join(suite))?;
    }
    copy_into(
        &root.join("docs/events-v1.schema.json"),
        &staging,
        &vm_root.join("docs/events-v1.schema.json"),
        false,
    )?;
    let vm_tests = vm_root.join("tests");
    fs::create_dir_all(staging.join(vm_tests.strip_prefix("/")?))?;
    let names: Vec<&str> = suites.iter().map(|(suite, _)| *suite).collect();
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t tmpfs tmp /tmp\n\
         ip link set lo up\n\
         echo \"observer-kernel: $(uname -r)\"\n\
         export PATH=/bin OBSERVER_BIN={observer} OBSERVER_TESTS_DIR={tests}\n\
         cd {tests} || poweroff -f\n\
         for suite in {suites}; do\n\
         \x20 {deps}/$suite --test-threads=1\n\
         \x20 echo \"{RESULT_PREFIX} $suite $?\"\n\
         done\n\
         poweroff -f\n",
        observer = vm_observer.display(),
        tests = vm_tests.display(),
        deps = vm_debug.join("deps").display(),
        suites = names.join(" "),
    );
    let init_path = staging.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    let cpio = kernels.join("initramfs.cpio");
    let file = fs::File::create(&cpio).with_context(|| format!("creating {}", cpio.display()))?;
    run(Command::new("sh")
        .args(["-c", "find . | cpio --quiet -o -H newc"])
        .current_dir(&staging)
        .stdout(file))?;
    Ok(cpio)
}

/// Copies `binary` (debug info stripped) to `target` in the initramfs, and every library
/// `ldd` lists for it to the path it has on the host.
fn copy_with_libraries(binary: &Path, staging: &Path, target: &Path) -> Result<()> {
    copy_into(binary, staging, target, true)?;
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("starting ldd")?;
    let listing = String::from_utf8_lossy(&ldd.stdout);
    let complaint = String::from_utf8_lossy(&ldd.stderr);
    ensure!(
        ldd.status.success() || complaint.contains("not a dynamic executable"),
        "ldd {}: {complaint}",
        binary.display()
    );
    for library in listing
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        let library = Path::new(library);
        copy_into(library, staging, library, false)?;
    }
    Ok(())
}

/// Copies `file` to the absolute path `target` inside `staging`.
fn copy_into(file: &Path, staging: &Path, target: &Path, strip: bool) -> Result<()> {
    let target = staging.join(target.strip_prefix("/")?);
    fs::create_dir_all(target.parent().context("a file has a parent")?)?;
    if strip {
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(file)
            .arg(&target))
    } else {
        fs::copy(file, &target)
            .map(drop)
            .with_context(|| format!("copying {}", file.display()))
    }
}

/// What a boot printed: each suite's exit status, the tests that passed, the kernel's
/// first Oops, BUG or panic.
struct Boot {
    results: Vec<(String, i32)>,
    passed: u64,
    timed_out: bool,
    kernel_failure: Option<String>,
}

impl Boot {
    /// The number of tests that passed if every suite reported success.
    fn check(&self, suites: &[(&str, &Path)]) -> Result<u64> {
        let failed: Vec<String> = suites
            .iter()
            .filter_map(
                |(suite, _)| match self.results.iter().find(|(name, _)| name == suite) {
                    Some((_, 0)) => None,
                    Some((_, rc)) => Some(format!("{suite} (exit status {rc})")),
                    None => Some(format!("{suite} (no result)")),
                },
            )
            .collect();
        if self.timed_out {
            bail!(
                "the VM was killed after {} min; failed: {}",
                VM_TIMEOUT.as_secs() / 60,
                failed.join(", ")
            );
        }
        if let Some(line) = &self.kernel_failure {
            bail!("the kernel said {line:?}; failed: {}", failed.join(", "));
        }
        ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
        Ok(self.passed)
    }
}

/// Boots the kernel; streams the serial console (each line prefixed with the series)
/// and saves it to `log`.
fn boot(series: &str, kernel: &Path, initramfs: &Path, log: &Path) -> Result<Boot> {
    eprintln!(
        "xtask: {series}: booting {} under qemu (TCG)",
        kernel.display()
    );
    // One host thread for both vCPUs: with a thread each (MTTCG), 6.12 once took an
    // int3 in kernel text that text_poke_bp had just removed (a static key flipped while
    // observer attached) and panicked. A VM keeps about one core busy either way.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu's stdout")?;
    let qemu_pid = qemu.id() as i32;
    // The watchdog kills qemu only while it is still our unreaped child: it is told to
    // stop, and joined, before qemu is waited for.
    let (done, stop) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if stop.recv_timeout(VM_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on our child, not reaped yet (see above).
            unsafe { libc::kill(qemu_pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut transcript = String::new();
    let mut results = Vec::new();
    let mut passed = 0;
    let mut kernel_failure = None;
    let mut serial = BufReader::new(stdout);
    let mut bytes = Vec::new();
    // Bytes, not lines of UTF-8: a test may print anything.
    while serial.read_until(b'\n', &mut bytes)? > 0 {
        let line = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\n')
            .to_string();
        bytes.clear();
        println!("[{series}] {line}");
        let trimmed = line.trim();
        if let Some(result) = trimmed.strip_prefix(RESULT_PREFIX) {
            let mut words = result.split_whitespace();
            if let (Some(suite), Some(rc)) = (words.next(), words.next()) {
                results.push((suite.to_string(), rc.parse().unwrap_or(-1)));
            }
        }
        if let Some(message) = kernel_failure_in(trimmed) {
            kernel_failure.get_or_insert_with(|| message.to_string());
        }
        passed += passed_in(trimmed);
        transcript.push_str(&line);
        transcript.push('\n');
    }
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    qemu.wait()?;
    fs::write(log, transcript)?;
    Ok(Boot {
        results,
        passed,
        timed_out,
        kernel_failure,
    })
}

/// `[   33.020722] Kernel panic - not syncing: …` → `Kernel panic - not syncing: …`; also
/// an Oops or a BUG.
fn kernel_failure_in(line: &str) -> Option<&str> {
    let (_, message) = line.strip_prefix('[')?.split_once("] ")?;
    ["Oops", "BUG:", "Kernel panic"]
        .iter()
        .any(|start| message.starts_with(start))
        .then_some(message)
}

/// `test result: ok. 12 passed; 0 failed; …` → 12.
fn passed_in(line: &str) -> u64 {
    line.strip_prefix("test result: ")
        .and_then(|counts| {
            counts
                .split(['.', ';'])
                .find_map(|part| part.trim().strip_suffix(" passed")?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lines() {
        assert_eq!(
            kernel_failure_in("[   32.897399] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"),
            Some("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        assert_eq!(
            kernel_failure_in("[   33.020722] Kernel panic - not syncing: Fatal exception"),
            Some("Kernel panic - not syncing: Fatal exception")
        );
        assert_eq!(
            kernel_failure_in("[    0.000000] Linux version 6.1.0"),
            None
        );
        assert_eq!(kernel_failure_in("test oops ... ok"), None);
        assert_eq!(
            passed_in("test result: ok. 12 passed; 0 failed; 0 ignored; finished in 1.2s"),
            12
        );
        assert_eq!(
            passed_in("test result: FAILED. 10 passed; 1 failed; 0 ignored"),
            10
        );
        assert_eq!(passed_in("observer-kernel-result: tcp 0"), 0);
        assert_eq!(suite_name(Path::new("target/debug/deps/tcp-4ea3b1")), "tcp");
        assert_eq!(
            suite_name(Path::new("target/debug/deps/signals_and_exits-0f2c")),
            "signals_and_exits"
        );
    }
}
