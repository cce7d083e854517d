//! Faults observer must survive or end cleanly on: a full disk, being SIGKILLed and
//! restarted, storms of processes and signals, PID reuse, and running with only the
//! capabilities it needs.
use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{TIMEOUT, observer_binary, temp_path};
use serde_json::Value;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = temp_path("small-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_disk_ends_observer_with_a_clear_error_and_only_whole_lines() {
    let disk = SmallDisk::mount("256k");
    let output = disk.dir.join("events.ndjson");
    let mut observer = Command::new(observer_binary())
        .args(["watch", "--json", "--output"])
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = observer.stderr.take().unwrap();
    // Short-lived processes until the disk fills and observer gives up.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = observer.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "observer kept running on a full disk"
        );
        for _ in 0..50 {
            Command::new("/bin/true").status().unwrap();
        }
    };
    let mut message = String::new();
    stderr.read_to_string(&mut message).unwrap();
    assert_eq!(status.code(), Some(1), "{message}");
    for expected in [
        "observer: error: ",
        "lines not written",
        "No space left on device",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing: {message}"
        );
    }
    let written = std::fs::read(&output).unwrap();
    assert!(
        written.len() > 100_000,
        "only {} bytes written",
        written.len()
    );
    assert_eq!(
        written.last(),
        Some(&b'\n'),
        "the file ends in a partial line"
    );
    for line in String::from_utf8(written).unwrap().lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&output).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640, "{mode:o}");
}
