//! `cargo xtask test --kernel 6.1`: the privileged tests on another kernel. Debian's cloud
//! kernel of that series is downloaded (never installed), and booted under qemu with
//! software emulation (KVM here is nested and unusable for stock kernels) from an
//! initramfs that carries busybox, observer, the test binaries and the libraries they
//! link. Its /init mounts what observer needs, runs each suite, prints one result line
//! per suite on the serial console, and powers off.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{install_apt, output_of, run};

/// Kernel series → the Debian (bookworm) package that depends on its newest cloud build.
const KERNELS: [(&str, &str); 2] = [
    ("6.1", "linux-image-cloud-amd64"),
    ("6.12", "linux-image-6.12-cloud-amd64"),
];
const VM_PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "cpio"];
/// Suites that need nothing but observer, the testee and busybox (the others start
/// Python, Node or Prometheus).
const VM_SUITES: [&str; 2] = ["signals_and_exits", "tcp"];
/// A boot takes ~15 s under TCG; the suites a few minutes.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const RESULT_PREFIX: &str = "observer-kernel-result:";
const BUSYBOX_APPLETS: [&str; 14] = [
    "sh", "mount", "ip", "poweroff", "kill", "sleep", "cat", "mkdir", "uname", "echo", "ls",
    "unshare", "setpriv", "umount",
];

/// Boots `series` and runs the VM suites from `test_binaries` there.
pub fn test(root: &Path, series: &str, observer: &Path, test_binaries: &[PathBuf]) -> Result<()> {
    install_apt(&VM_PACKAGES)?;
    let kernel = fetch_kernel(root, series)?;
    let suites: Vec<&PathBuf> = test_binaries
        .iter()
        .filter(|binary| VM_SUITES.iter().any(|suite| suite_name(binary) == *suite))
        .collect();
    ensure!(
        suites.len() == VM_SUITES.len(),
        "expected test binaries for {VM_SUITES:?}, found {suites:?}"
    );
    let initramfs = build_initramfs(root, observer, &suites)?;
    let log = root.join(format!("target/kernels/{series}.log"));
    let results = boot(&kernel, &initramfs, &log)?;
    let failed: Vec<&(String, i32)> = results.iter().filter(|(_, rc)| *rc != 0).collect();
    if results.len() != suites.len() || !failed.is_empty() {
        bail!(
            "on {series}: {} of {} suites reported, failed: {failed:?} (serial log: {})",
            results.len(),
            suites.len(),
            log.display()
        );
    }
    eprintln!("xtask: every VM suite passed on {series}");
    Ok(())
}

/// `target/debug/deps/tcp-4ea3…` → `tcp`.
fn suite_name(binary: &Path) -> &str {
    let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.rsplit_once('-').map_or(name, |(suite, _)| suite)
}

/// Downloads and extracts the series' newest cloud kernel; returns its vmlinuz.
fn fetch_kernel(root: &Path, series: &str) -> Result<PathBuf> {
    let dir = root.join("target/kernels").join(series);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let Some((_, meta)) = KERNELS.iter().find(|(s, _)| *s == series) else {
        bail!(
            "no kernel {series}: choose one of {:?}",
            KERNELS.map(|(s, _)| s)
        );
    };
    let depends = || output_of(Command::new("apt-cache").args(["depends", meta]));
    let listing = match depends() {
        Some(listing) => listing,
        None => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            depends().with_context(|| format!("apt-cache depends {meta}"))?
        }
    };
    let package = listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-"))
        .with_context(|| format!("{meta} names no kernel image:\n{listing}"))?
        .to_string();
    let download = dir.join("download");
    fs::create_dir_all(&download)?;
    eprintln!("xtask: downloading {package}");
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&download))?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let extracted = dir.join("extracted");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let image = fs::read_dir(extracted.join("boot"))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the package has no boot/vmlinuz-*")?;
    fs::copy(&image, &vmlinuz)?;
    fs::remove_dir_all(&extracted)?;
    fs::remove_dir_all(&download)?;
    Ok(vmlinuz)
}

/// Writes the initramfs (an uncompressed newc cpio); returns its path. Binaries keep their
/// absolute paths, so that the tests find the testee, the schema and OBSERVER_BIN where
/// they were built.
fn build_initramfs(root: &Path, observer: &Path, suites: &[&PathBuf]) -> Result<PathBuf> {
    let staging = root.join("target/kernels/initramfs");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    fs::copy("/bin/busybox", staging.join("bin/busybox")).context("busybox-static")?;
    for applet in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", staging.join("bin").join(applet))?;
    }
    let testee = observer.with_file_name("testee");
    for binary in [observer, testee.as_path()]
        .into_iter()
        .chain(suites.iter().map(|p| p.as_path()))
    {
        copy_with_libraries(binary, &staging)?;
    }
    let schema = root.join("docs/events-v1.schema.json");
    copy_into(&schema, &staging, false)?;
    let suite_list: Vec<String> = suites.iter().map(|p| p.display().to_string()).collect();
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t tmpfs tmp /tmp\n\
         ip link set lo up\n\
         echo \"observer-kernel: $(uname -r)\"\n\
         export PATH=/bin OBSERVER_BIN={observer}\n\
         cd {tests}\n\
         for suite in {suites}; do\n\
         \x20 $suite --test-threads=1\n\
         \x20 echo \"{RESULT_PREFIX} ${{suite##*/}} $?\"\n\
         done\n\
         poweroff -f\n",
        observer = observer.display(),
        tests = root.join("tests").display(),
        suites = suite_list.join(" "),
    );
    let init_path = staging.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    fs::create_dir_all(staging.join(root.join("tests").strip_prefix("/")?))?;
    let cpio = root.join("target/kernels/initramfs.cpio");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . | cpio --quiet -o -H newc > {}",
            cpio.display()
        ))
        .current_dir(&staging))?;
    Ok(cpio)
}

/// Copies `binary` (debug info stripped) and every library `ldd` lists for it.
fn copy_with_libraries(binary: &Path, staging: &Path) -> Result<()> {
    copy_into(binary, staging, true)?;
    let listing = output_of(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {}", binary.display()))?;
    for library in listing
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        copy_into(Path::new(library), staging, false)?;
    }
    Ok(())
}

fn copy_into(file: &Path, staging: &Path, strip: bool) -> Result<()> {
    let target = staging.join(file.strip_prefix("/")?);
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

/// Boots the kernel; streams and saves the serial console; returns (suite, exit status)
/// per result line.
fn boot(kernel: &Path, initramfs: &Path, log: &Path) -> Result<Vec<(String, i32)>> {
    eprintln!("xtask: booting {} under qemu (TCG)", kernel.display());
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
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
    let qemu_pid = qemu.id();
    // A watchdog: a hung guest must not hang CI.
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < VM_TIMEOUT {
            std::thread::sleep(Duration::from_secs(1));
        }
        // SAFETY: kill(2) on qemu's pid; harmless if it already exited.
        unsafe { libc::kill(qemu_pid as i32, libc::SIGKILL) };
    });
    let mut transcript = String::new();
    let mut results = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.trim().strip_prefix(RESULT_PREFIX) {
            let mut words = result.split_whitespace();
            if let (Some(suite), Some(rc)) = (words.next(), words.next()) {
                results.push((suite.to_string(), rc.parse().unwrap_or(-1)));
            }
        }
        transcript.push_str(&line);
        transcript.push('\n');
    }
    qemu.wait()?;
    fs::write(log, transcript)?;
    Ok(results)
}
