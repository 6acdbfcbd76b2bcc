//! A throw-away `redis-server` for tests: started on a free loopback port with no
//! persistence, in a directory of its own, and killed when dropped. It can be stopped and
//! started again on the same port (empty, as a crashed server comes back), and its memory can
//! be capped (`maxmemory` with `noeviction`, as a full server). [`RedisServer::start_tls`]
//! starts one that speaks only TLS, with a certificate from a throw-away CA, and requires a
//! password.

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
    /// TLS only, with this password.
    tls_password: Option<String>,
    /// A Redis Cluster node (see [`crate::redis_cluster`]).
    cluster: bool,
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
        let mut s = Self::new(None);
        s.spawn(maxmemory);
        s
    }

    /// Starts a server that accepts only TLS, with a certificate for 127.0.0.1 signed by a CA
    /// made for it ([`RedisServer::ca_path`]), and only clients that give `password`.
    ///
    /// # Panics
    /// If `openssl` cannot make the certificates, or as [`RedisServer::start`].
    pub fn start_tls(password: &str) -> Self {
        let mut s = Self::new(Some(password.to_string()));
        let d = &s.dir;
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for args in [
            format!("req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=memout-test-CA"),
            format!("req {key} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
             -out server.pem -extfile san.ext"
                .to_string(),
        ] {
            let ok = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("running openssl");
            assert!(ok.success(), "openssl {args} failed");
        }
        s.spawn(0);
        s
    }

    fn new(tls_password: Option<String>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("memout-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        Self {
            port,
            dir,
            child: None,
            tls_password,
            cluster: false,
        }
    }

    /// Starts an empty Redis Cluster node (`cluster-enabled`), not yet part of a cluster.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_cluster_node() -> Self {
        let mut s = Self::new(None);
        s.cluster = true;
        s.spawn(0);
        s
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn spawn(&mut self, maxmemory: u64) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.tls_password {
            None => cmd.args(["--bind", "127.0.0.1", "--port", &port]),
            Some(pw) => cmd
                .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port])
                .args([
                    "--tls-cert-file",
                    "server.pem",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
                .args(["--requirepass", pw]),
        };
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"]);
        }
        let child = cmd
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
            .current_dir(&self.dir)
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

    /// `redis://127.0.0.1:PORT/0`, or `rediss://:PASSWORD@127.0.0.1:PORT/0` with TLS.
    pub fn url(&self) -> String {
        match &self.tls_password {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(pw) => format!("rediss://:{pw}@127.0.0.1:{}/0", self.port),
        }
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
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(pw) = &self.tls_password {
            cmd.args(["--tls", "--cacert"]).arg(self.ca_path()).args([
                "--no-auth-warning",
                "-a",
                pw,
            ]);
        }
        let out = cmd.args(args).output().expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
