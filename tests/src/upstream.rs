//! tests/servers/real/upstream.py, a backend for the proxies under test: answers /slow
//! after a delay, anything else at once.
use std::{
    io::Read,
    net::TcpListener,
    process::{Child, Command, Stdio},
};

use crate::servers_dir;

/// upstream.py on a port of its own, killed on drop.
pub struct Upstream {
    child: Child,
    pub port: u16,
}

impl Upstream {
    /// An upstream on loopback that answers /slow after `seconds`, anything else at once.
    pub fn start(seconds: u32) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("python3")
            .arg(servers_dir().join("real/upstream.py"))
            .args([port.to_string(), seconds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the upstream");
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut ready)
            .unwrap();
        assert_eq!(&ready, b"ready\n");
        Self { child, port }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
