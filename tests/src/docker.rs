//! A real container runtime for the container tests: a private `dockerd` (Debian's
//! docker.io: dockerd 20.10, containerd, runc, docker-init) whose data root, exec root,
//! pidfile and socket live in a temporary directory, so that a host's own Docker is
//! never touched, with images built offline (`docker import` of a rootfs made from host
//! files). Dropping it removes its containers, stops it and deletes the directory.
//!
//! If dockerd cannot start, the test fails: containers are part of the suite, never
//! skipped.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{servers_dir, temp_path, tests_dir};

/// Debian's docker.io puts the CLI here; a newer one elsewhere on PATH may not speak to
/// dockerd 20.10 the same way.
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const CONTAINERD: &str = "/usr/bin/containerd";
/// A host's own containerd: dockerd 20.10 uses it instead of starting its own when this
/// socket exists, which would put the tests' containers in the host's containerd.
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";

/// The busybox-only image: `sh`, `sleep` and the other applets in /bin.
pub const BUSYBOX_IMAGE: &str = "observer-test/busybox:1";
/// busybox plus Python 3 and tests/servers/containers/app.py as /app.py.
pub const APP_IMAGE: &str = "observer-test/app:1";
/// busybox plus the host's HAProxy (Debian's haproxy) as /usr/sbin/haproxy.
pub const HAPROXY_IMAGE: &str = "observer-test/haproxy:1";

/// A private dockerd.
pub struct Dockerd {
    dir: PathBuf,
    child: Child,
    socket: PathBuf,
    /// Our own containerd, when a host's runs (else dockerd supervises its own).
    containerd: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd without the default bridge (`--bridge=none`: containers get host
    /// or user-defined networks), without firewall rules, and waits until it answers.
    pub fn start() -> Self {
        assert!(
            Path::new(DOCKERD).is_file(),
            "{DOCKERD} is missing: `cargo xtask test` installs Debian's docker.io"
        );
        let dir = temp_path("docker");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        // OBSERVER_TEST_OWN_CONTAINERD forces that path where no host containerd runs.
        let containerd = (Path::new(SYSTEM_CONTAINERD).exists()
            || std::env::var_os("OBSERVER_TEST_OWN_CONTAINERD").is_some())
        .then(|| own_containerd(&dir));
        let mut command = Command::new(DOCKERD);
        if containerd.is_some() {
            command
                .arg("--containerd")
                .arg(dir.join("containerd/containerd.sock"));
        }
        let child = command
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=overlay2",
                "--log-level=warn",
            ])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let mut dockerd = Self {
            dir,
            child,
            socket,
            containerd,
        };
        dockerd.wait_until_answering();
        dockerd
    }

    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .command(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dockerd exited ({status}) before answering:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its `--data-root` (observer's `--docker-root`).
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// dockerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `docker ARGS` against this daemon, whatever its outcome.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running docker")
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = self.command(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// `docker ARGS` and how long it took (e.g. `docker stop`).
    pub fn timed(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        self.docker(args);
        started.elapsed()
    }

    /// `docker inspect NAME`'s object.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.docker(&["inspect", name]);
        let mut all: Value = serde_json::from_str(&text).expect("docker inspect prints JSON");
        all[0].take()
    }

    /// The pid of a running container's PID 1, as docker knows it.
    pub fn pid_of(&self, name: &str) -> u32 {
        let pid = self.inspect(name)["State"]["Pid"].as_u64().unwrap() as u32;
        assert_ne!(pid, 0, "container {name} is not running");
        pid
    }

    /// Imports the busybox image (2 MB).
    pub fn import_busybox(&self) {
        self.import(busybox_rootfs(), BUSYBOX_IMAGE);
    }

    /// Imports the Python app image (busybox, python3, its libraries and stdlib, app.py).
    pub fn import_app(&self) {
        self.import(app_rootfs(), APP_IMAGE);
    }

    /// Imports the HAProxy image (busybox, the host's haproxy and its libraries).
    pub fn import_haproxy(&self) {
        self.import(haproxy_rootfs(), HAPROXY_IMAGE);
    }

    fn import(&self, tarball: &Path, tag: &str) {
        self.docker(&[
            "import",
            "--change",
            "ENV PATH=/bin:/usr/bin",
            &tarball.display().to_string(),
            tag,
        ]);
    }

    /// Waits until `docker logs NAME` has a line starting with `prefix`.
    pub fn wait_for_log(&self, name: &str, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.command(&["logs", name]);
            let text = String::from_utf8_lossy(&output.stdout);
            if text.lines().any(|line| line.starts_with(prefix)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {name} never logged {prefix:?}:\n{text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.command(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&ids.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = self.command(&[&["rm", "-f"][..], &ids].concat());
        }
        let networks = self.command(&["network", "ls", "-q", "--filter", "type=custom"]);
        for id in String::from_utf8_lossy(&networks.stdout).split_whitespace() {
            let _ = self.command(&["network", "rm", id]);
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(containerd) = &mut self.containerd {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(containerd.id() as i32, libc::SIGTERM) };
            let _ = containerd.wait();
        }
        // What dockerd may leave mounted below its directories (overlays, netns files).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .filter(|point| Path::new(point).starts_with(&self.dir))
            .collect();
        ours.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in ours {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A containerd of the tests' own, its root, state and sockets under `dir/containerd`,
/// for when a host's containerd runs (dockerd would otherwise use that one).
fn own_containerd(dir: &Path) -> Child {
    let root = dir.join("containerd");
    std::fs::create_dir_all(&root).unwrap();
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n",
            root.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("containerd.log")).unwrap();
    let child = Command::new(CONTAINERD)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting containerd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !root.join("containerd.sock").exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Where the rootfs tarballs are kept: target/container-images, rebuilt once per test
/// process (from the host's files as they are now) and replaced whole, so that a run
/// leaves one of each behind, not one per process.
fn image_path(name: &str) -> PathBuf {
    let dir = tests_dir().join("../target/container-images");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Builds `name` with `build` (given a scratch path to write) and moves it in place.
fn build_tarball(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let path = image_path(name);
    let scratch = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&scratch);
    build(&scratch);
    std::fs::rename(&scratch, &path).unwrap();
    path
}

/// A rootfs tarball of busybox-static and its applet links.
fn busybox_rootfs() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        build_tarball("busybox-rootfs.tar", |tarball| {
            let staging = busybox_staging();
            tar(&["-c", "-f"], tarball, &staging, &["."]);
            let _ = std::fs::remove_dir_all(&staging);
        })
    })
}

fn busybox_staging() -> PathBuf {
    let staging = temp_path("busybox-rootfs");
    let bin = staging.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing (Debian's busybox-static)"
    );
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    for dir in ["tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(staging.join(dir)).unwrap();
    }
    staging
}

/// busybox, /usr/bin/python3.11 with the libraries `ldd` names and its stdlib (without
/// its tests and GUI), and app.py: about 55 MB.
fn app_rootfs() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| build_tarball("app-rootfs.tar", build_app_rootfs))
}

fn build_app_rootfs(tarball: &Path) {
    let staging = busybox_staging();
    std::fs::copy(
        servers_dir().join("containers/app.py"),
        staging.join("app.py"),
    )
    .unwrap();
    std::fs::create_dir_all(staging.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("python3.11", staging.join("usr/bin/python3")).unwrap();
    tar(&["-c", "-f"], tarball, &staging, &["."]);
    let mut files = with_libraries("/usr/bin/python3.11");
    files.push("usr/lib/python3.11".to_string());
    let args = vec![
        "--exclude=usr/lib/python3.11/test",
        "--exclude=usr/lib/python3.11/idlelib",
        "--exclude=usr/lib/python3.11/tkinter",
        "--exclude=usr/lib/python3.11/ensurepip",
        "--exclude=usr/lib/python3.11/lib2to3",
        "--exclude=usr/lib/python3.11/pydoc_data",
        "--exclude=usr/lib/python3.11/dist-packages",
        "--exclude=usr/lib/python3.11/site-packages",
        "--exclude=__pycache__",
        "-r",
        "-h",
        "-f",
    ];
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    tar(&args, tarball, Path::new("/"), &files);
    let _ = std::fs::remove_dir_all(&staging);
}

/// busybox and the host's /usr/sbin/haproxy with the libraries `ldd` names: about 10 MB.
fn haproxy_rootfs() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        build_tarball("haproxy-rootfs.tar", |tarball| {
            let staging = busybox_staging();
            tar(&["-c", "-f"], tarball, &staging, &["."]);
            let _ = std::fs::remove_dir_all(&staging);
            let files = with_libraries("/usr/sbin/haproxy");
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            tar(&["-r", "-h", "-f"], tarball, Path::new("/"), &files);
        })
    })
}

/// `binary` and the libraries `ldd` names for it, as paths relative to /.
fn with_libraries(binary: &str) -> Vec<String> {
    assert!(Path::new(binary).is_file(), "{binary} is missing");
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
    let mut files = vec![binary.trim_start_matches('/').to_string()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux… (0x…)"
        let path = line
            .split_once("=>")
            .map_or(line, |(_, path)| path)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            files.push(path.trim_start_matches('/').to_string());
        }
    }
    files
}

fn tar(args: &[&str], tarball: &Path, dir: &Path, files: &[&str]) {
    let status = Command::new("tar")
        .args(args)
        .arg(tarball)
        .arg("-C")
        .arg(dir)
        .args(files)
        .status()
        .expect("running tar");
    assert!(status.success(), "tar {args:?} {files:?} failed");
}
