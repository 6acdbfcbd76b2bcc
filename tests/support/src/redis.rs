//! A throw-away `redis-server` for tests: started on a free loopback port with no
//! persistence, in a directory of its own, and killed when dropped. It can be stopped and
//! started again on the same port (empty, as a crashed server comes back), and its memory can
//! be capped (`maxmemory` with `noeviction`, as a full server).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running test server.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("bound").port()
}

impl RedisServer {
    /// Starts a server; `maxmemory` (bytes, 0 for none) with the `noeviction` policy.
    ///
    /// # Panics
    /// If `redis-server` cannot be started or does not answer within 10 s.
    pub fn start(maxmemory: u64) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("memout-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut s = Self {
            port,
            dir,
            child: None,
        };
        s.spawn(maxmemory);
        s
    }

    fn spawn(&mut self, maxmemory: u64) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args([
                "--maxmemory",
                &maxmemory.to_string(),
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts a new, empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn(0);
    }

    /// Runs `redis-cli -p PORT args…` and returns its output.
    ///
    /// # Panics
    /// If `redis-cli` cannot be run.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
