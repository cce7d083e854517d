//! Developer and CI tasks: `cargo xtask <task>`. Every task installs what it needs first,
//! idempotently, and says plainly what it could not install.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod empty_program;
mod kernel;
mod soak;

/// Debian packages the eBPF build needs (bpf-linker links against LLVM 22).
const APT_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages the privileged tests run against (a real Prometheus scrapes observer).
/// Test prerequisites from Debian: Prometheus scrapes `--metrics`; logrotate and
/// syslog-ng take observer's output as a log pipeline does (tests/tests/pipeline.rs).
const TEST_APT_PACKAGES: [&str; 3] = ["prometheus", "logrotate", "syslog-ng-core"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The toolchain that builds the eBPF crate (`-Z build-std`); the host uses stable.
const EBPF_TOOLCHAIN: &str = "nightly";
const EBPF_TARGET: &str = "bpfel-unknown-none";
const TRACEFS: &str = "/sys/kernel/tracing";
/// On sudo's secure_path, so that `sudo observer watch` works after install.
const INSTALL_PATH: &str = "/usr/local/bin/observer";

#[derive(Parser)]
#[command(about = "observer's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF build prerequisites (apt packages, rust-src, bpf-linker) and
    /// mount tracefs; does nothing that is already done.
    Setup,
    /// Set up, then build the kernel programs into target/bpf/observer.bpf.o.
    BuildEbpf,
    /// Build and install observer (release), then run `observer watch ARGS…`, with sudo
    /// if not root.
    Watch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build observer (release) and install it as /usr/local/bin/observer (sudo if needed).
    Install,
    /// rustfmt and clippy (-D warnings) on the host crates and the eBPF crate.
    Lint,
    /// Fuzz the record decoder and the report replay (cargo fuzz, nightly) for SECONDS
    /// each; new inputs that find new paths are kept in fuzz/corpus/.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Measure observer's overhead and loss against no tracer and bpftrace (as root):
    /// prints a table, writes target/bench/results.json.
    Bench {
        /// Alternating rounds per load, each about 6 s per tracer; more resolve finer on
        /// a noisy machine.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Steady churn of real processes and connections for MINUTES (as root), observer's
    /// RSS and CPU sampled every 5 s and plotted; fails if memory grows or anything is
    /// lost (tests/tests/soak.rs).
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// The whole suite: lint, unit tests, the privileged tests that load the real
    /// programs (as root, through sudo if needed, one at a time), then the VM suites on
    /// Debian's 6.1 and 6.12 cloud kernels, booted under qemu.
    Test {
        /// Instead, run only the VM suites (the privileged suites that need no Python,
        /// Node or Prometheus) on Debian's cloud kernel of this series (6.1 or 6.12),
        /// booted under qemu; repeat for both.
        #[arg(long, value_name = "SERIES")]
        kernel: Vec<String>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup => {
            setup_toolchain()?;
            mount_tracefs()
        }
        Task::BuildEbpf => build_ebpf(&root).map(drop),
        Task::Watch { args } => watch(&root, &args),
        Task::Install => install(&root).map(drop),
        Task::Lint => lint(&root),
        Task::Test { kernel } if kernel.is_empty() => test(&root),
        Task::Test { kernel } => test_on_kernels(&root, &kernel),
        Task::Bench { rounds } => bench::run(&root, rounds),
        Task::Soak { minutes } => soak::run_soak(&root, minutes),
        Task::Fuzz { seconds } => fuzz(&root, seconds),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, failing with its command line if it fails.
fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn output_of(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `cargo SUBCOMMAND` on the eBPF crate with the eBPF toolchain and target, clean of the
/// variables the outer (stable) cargo set.
fn ebpf_cargo(root: &Path, subcommand: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", EBPF_TOOLCHAIN, "cargo", subcommand])
        .args([
            "--package",
            "observer-ebpf",
            "--release",
            "--target",
            EBPF_TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .current_dir(root);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        command.env_remove(var);
    }
    command
}

fn setup_toolchain() -> Result<()> {
    install_apt_packages()?;
    install_rust_src()?;
    install_bpf_linker()
}

fn install_apt_packages() -> Result<()> {
    install_apt(&APT_PACKAGES)
}

/// Installs the Debian packages not installed yet.
fn install_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: install them with `sudo apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {}", missing.join(" ")))
}

/// Debian's Docker (dockerd 20.10 with containerd, runc and docker-init) and busybox-static
/// (the containers' rootfs), for tests/tests/containers.rs. The tests start their own
/// dockerd, with its state in a temporary directory, and never use the host's.
const DOCKER_APT_PACKAGES: [&str; 2] = ["docker.io", "busybox-static"];

fn install_docker() -> Result<()> {
    install_apt(&DOCKER_APT_PACKAGES)
}

fn install_rust_src() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .with_context(|| {
        format!("the {EBPF_TOOLCHAIN} toolchain is not installed (rustup toolchain list)")
    })?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the {EBPF_TOOLCHAIN} toolchain");
    run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .context("adding rust-src (needed for -Z build-std=core)")
}

fn install_bpf_linker() -> Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let version = output_of(Command::new("bpf-linker").arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.trim().starts_with(&wanted))
    {
        return Ok(());
    }
    eprintln!("xtask: building {wanted} against LLVM 22 (a few minutes, once)");
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env_remove("RUSTUP_TOOLCHAIN"))
    .context("installing bpf-linker (needs llvm-22-dev; /usr/bin/llvm-config is an older LLVM)")
}

fn mount_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if std::fs::read_dir(&events).is_ok_and(|mut entries| entries.next().is_some()) {
        return Ok(());
    }
    if !is_root() {
        eprintln!("xtask: tracefs is not mounted; `observer watch` (as root) mounts it");
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
        .with_context(|| format!("mounting tracefs at {TRACEFS}"))
}

/// Builds the kernel programs; returns the object's path.
fn build_ebpf(root: &Path) -> Result<PathBuf> {
    setup_toolchain()?;
    run(&mut ebpf_cargo(root, "build"))?;
    let built = root
        .join("target")
        .join(EBPF_TARGET)
        .join("release/observer-ebpf");
    let dir = root.join("target/bpf");
    std::fs::create_dir_all(&dir)?;
    let object = dir.join("observer.bpf.o");
    // Copy only on change, so that cargo does not rebuild observer for nothing.
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&object).ok().as_ref() != Some(&new) {
        std::fs::write(&object, &new)?;
    }
    Ok(object)
}

fn host_cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    command
}

/// Runs `program args` as root: directly when root, else through sudo.
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    }
}

/// Builds the release binary and installs it; returns where.
fn install(root: &Path) -> Result<PathBuf> {
    build_ebpf(root)?;
    run(host_cargo(root).args(["build", "--release", "--package", "observer"]))?;
    let built = root.join("target/release/observer");
    if !is_root() {
        eprintln!("xtask: installing {INSTALL_PATH} needs root; asking sudo");
    }
    run(as_root(Path::new("install"))
        .args(["-m", "0755"])
        .arg(&built)
        .arg(INSTALL_PATH))
    .with_context(|| format!("installing {INSTALL_PATH}"))?;
    eprintln!("xtask: installed {INSTALL_PATH}");
    // Completions and the man page, generated by the binary from its CLI definition.
    for (args, path) in [
        (
            &["completions", "bash"][..],
            "/usr/local/share/bash-completion/completions/observer",
        ),
        (
            &["completions", "zsh"],
            "/usr/local/share/zsh/site-functions/_observer",
        ),
        (
            &["completions", "fish"],
            "/usr/local/share/fish/vendor_completions.d/observer.fish",
        ),
        (&["man"], "/usr/local/share/man/man1/observer.1"),
    ] {
        let output = Command::new(&built).args(args).output()?;
        ensure!(
            output.status.success(),
            "observer {} failed",
            args.join(" ")
        );
        if is_root() {
            let path = Path::new(path);
            std::fs::create_dir_all(path.parent().expect("absolute path"))?;
            std::fs::write(path, &output.stdout)?;
        }
    }
    if is_root() {
        eprintln!("xtask: installed completions (bash, zsh, fish) and observer(1)");
    }
    Ok(PathBuf::from(INSTALL_PATH))
}

fn watch(root: &Path, args: &[String]) -> Result<()> {
    let binary = install(root)?;
    // Let observer's own exit status (and its graceful SIGINT handling) speak for itself.
    let status = as_root(&binary)
        .arg("watch")
        .args(args)
        .status()
        .context("starting observer")?;
    std::process::exit(status.code().unwrap_or(1));
}

fn lint(root: &Path) -> Result<()> {
    run(host_cargo(root).args(["fmt", "--all", "--check"]))?;
    run(host_cargo(root).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    setup_toolchain()?;
    run(ebpf_cargo(root, "clippy").args(["--", "-D", "warnings"]))
}

fn test(root: &Path) -> Result<()> {
    build_ebpf(root)?;
    install_apt(&TEST_APT_PACKAGES)?;
    install_docker()?;
    install_real_servers(root)?;
    mount_tracefs()?;
    lint(root)?;
    run(host_cargo(root).args(["build", "--package", "observer"]))?;
    run(host_cargo(root).args([
        "test",
        "--package",
        "observer",
        "--package",
        "observer-common",
        "--package",
        "xtask",
    ]))?;
    // The privileged suite loads the real programs: build it as this user, run it as root
    // (through sudo when needed), one test at a time.
    let observer = root.join("target/debug/observer");
    let binaries = privileged_test_binaries(root)?;
    for binary in &binaries {
        let mut command = if is_root() {
            Command::new(binary)
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("--preserve-env=OBSERVER_BIN").arg(binary);
            sudo
        };
        run(command
            .arg("--test-threads=1")
            .env("OBSERVER_BIN", &observer)
            .current_dir(root.join("tests")))?;
    }
    // Then the same observer on the older kernels CI vouches for.
    let series = kernel::KERNELS.map(|(series, _)| series);
    kernel::test(root, &series, &observer, &binaries)
}

/// Debian packages of the real servers that tests/tests/real_servers.rs stops (the JDK
/// runs tests/servers/real/SlowServer.java, Node.js and npm the npm packages below).
const REAL_SERVER_APT_PACKAGES: [&str; 8] = [
    "nginx",
    "haproxy",
    "caddy",
    // Apache httpd alone: the `apache2` package would also install and start a service.
    "apache2-bin",
    "redis-server",
    "postgresql",
    "python3-venv",
    "openjdk-17-jdk-headless",
];
/// Node.js and npm, from Debian only where no `node` and `npm` are on the PATH: a
/// Node.js from elsewhere (NodeSource's bundles npm) conflicts with Debian's npm.
const NODE_APT_PACKAGES: [&str; 2] = ["nodejs", "npm"];
/// PyPI packages, into the venv target/real-servers/venv.
const REAL_SERVER_PIP_PACKAGES: [&str; 2] = ["gunicorn==27.0.1", "uvicorn==0.54.0"];
/// npm packages, into target/real-servers/node.
const REAL_SERVER_NPM_PACKAGES: [&str; 2] = ["http-server@14.1.1", "express@5.3.0"];

/// Installs the real servers the privileged tests stop (tests/tests/real_servers.rs):
/// Debian's, and PyPI's and npm's into target/real-servers (a venv, a node_modules), each
/// skipped when the versions recorded there are the ones wanted.
fn install_real_servers(root: &Path) -> Result<()> {
    install_apt(&REAL_SERVER_APT_PACKAGES)?;
    let has = |tool: &str| output_of(Command::new(tool).arg("--version")).is_some();
    if !(has("node") && has("npm")) {
        install_apt(&NODE_APT_PACKAGES)?;
    }
    let dir = root.join("target/real-servers");
    let venv = dir.join("venv");
    let pip_stamp = venv.join("observer-packages.txt");
    let pip_wanted = REAL_SERVER_PIP_PACKAGES.join("\n");
    if std::fs::read_to_string(&pip_stamp).ok().as_deref() != Some(pip_wanted.as_str()) {
        eprintln!(
            "xtask: installing {} into {}",
            REAL_SERVER_PIP_PACKAGES.join(" "),
            venv.display()
        );
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("creating the venv for the real servers")?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(REAL_SERVER_PIP_PACKAGES))
        .context("installing the real servers from PyPI")?;
        std::fs::write(&pip_stamp, &pip_wanted)?;
    }
    let node = dir.join("node");
    let npm_stamp = node.join("observer-packages.txt");
    let npm_wanted = REAL_SERVER_NPM_PACKAGES.join("\n");
    if std::fs::read_to_string(&npm_stamp).ok().as_deref() != Some(npm_wanted.as_str()) {
        eprintln!(
            "xtask: installing {} into {}",
            REAL_SERVER_NPM_PACKAGES.join(" "),
            node.display()
        );
        std::fs::create_dir_all(&node)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&node)
            .args(REAL_SERVER_NPM_PACKAGES))
        .context("installing the real servers from npm")?;
        std::fs::write(&npm_stamp, &npm_wanted)?;
    }
    Ok(())
}

/// The fuzz targets in fuzz/fuzz_targets, each with its corpus.
const FUZZ_TARGETS: [&str; 2] = ["decode_record", "report_replay"];

fn fuzz(root: &Path, seconds: u32) -> Result<()> {
    if output_of(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    install_rust_src()?;
    for target in FUZZ_TARGETS {
        let corpus = root.join("fuzz/corpus").join(target);
        run(Command::new("rustup")
            .args(["run", EBPF_TOOLCHAIN, "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}")])
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(root.join("fuzz")))?;
    }
    Ok(())
}

fn test_on_kernels(root: &Path, series: &[String]) -> Result<()> {
    build_ebpf(root)?;
    run(host_cargo(root).args(["build", "--package", "observer"]))?;
    let binaries = privileged_test_binaries(root)?;
    let series: Vec<&str> = series.iter().map(String::as_str).collect();
    kernel::test(
        root,
        &series,
        &root.join("target/debug/observer"),
        &binaries,
    )
}

/// Builds the privileged tests without running them; returns their executables.
fn privileged_test_binaries(root: &Path) -> Result<Vec<PathBuf>> {
    let output = host_cargo(root)
        .args([
            "test",
            "--package",
            "observer-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the privileged tests")?;
    if !output.status.success() {
        bail!("building the privileged tests failed");
    }
    let binaries: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            // Integration tests only: the package's lib and bin have no tests of their own.
            message["reason"] == "compiler-artifact"
                && message["profile"]["test"] == true
                && message["target"]["kind"] == serde_json::json!(["test"])
        })
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .collect();
    if binaries.is_empty() {
        bail!("cargo built no privileged test binaries");
    }
    Ok(binaries)
}
