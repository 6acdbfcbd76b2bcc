//! Nobody can lock an operator out of the control socket: silent clients, clients trickling a
//! frame byte by byte, and a full house; and a refused client gets the refusal, not a broken
//! pipe.

use memout_protocol::codec::encode_frame;
use memout_protocol::control::{ErrorKind, Request, Response};
use memout_server::control::{Client, ClientError};
use memout_server::ring_driver::host_test_config;
use memout_server::{Eviction, Server};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// A scratch socket path, removed with its directory when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("memout-lockout-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server_with_guest() -> (Server, memout_server::GuestHandle) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let g = server
        .add_guest(host_test_config(
            "g",
            64 << 20,
            32 << 20,
            Eviction::None,
            &mem,
        ))
        .expect("add_guest");
    (server, g)
}

/// An operator connects, says hello and lists the guests; returns how long it took.
fn operator(path: &Path) -> Duration {
    let t = Instant::now();
    let mut c = Client::connect(path, "operator", Duration::from_secs(5)).expect("operator");
    let r = c.request(&Request::List).unwrap();
    assert!(
        matches!(r, Response::Guests(ref g) if g.len() == 1),
        "{r:?}"
    );
    t.elapsed()
}

#[test]
fn silent_clients_cannot_lock_out_an_operator() {
    if !memout_test_support::require(
        memout_test_support::Piece::Uffd,
        "silent_clients_cannot_lock_out_an_operator",
    ) {
        return;
    }
    let (server, _g) = server_with_guest();
    let dir = Scratch::new("silent");
    let ctl = server.serve_control(dir.0.join("ctl.sock")).unwrap();
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(ctl.path()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let took = operator(ctl.path());
        assert!(
            took < Duration::from_millis(500),
            "operator served in {took:?}"
        );
    }
    // The silent ones are told why they are closed, within the hello timeout (2 s).
    let mut s = silent.into_iter().last().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let stats = ctl.stats();
    let evicted = stats.evicted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(evicted >= 4, "{evicted} connections made room");
}

#[test]
fn trickling_clients_are_cut_off_at_the_frame_deadline() {
    if !memout_test_support::require(
        memout_test_support::Piece::Uffd,
        "trickling_clients_are_cut_off_at_the_frame_deadline",
    ) {
        return;
    }
    let (server, _g) = server_with_guest();
    let dir = Scratch::new("trickle");
    let ctl = server.serve_control(dir.0.join("ctl.sock")).unwrap();
    let frame = encode_frame(&Request::Hello {
        version: memout_protocol::control::CONTROL_VERSION,
        client: "trickle".into(),
    })
    .unwrap();
    let tricklers: Vec<_> = (0..16)
        .map(|_| {
            let mut s = UnixStream::connect(ctl.path()).unwrap();
            let frame = frame.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                for b in &frame {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1500));
                    if t0.elapsed() > Duration::from_secs(8) {
                        return Err(t0.elapsed());
                    }
                }
                Ok(t0.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let took = operator(ctl.path());
    assert!(
        took < Duration::from_millis(500),
        "operator served in {took:?}"
    );
    for t in tricklers {
        let cut = t.join().unwrap();
        assert!(
            cut.is_ok_and(|d| d < Duration::from_secs(6)),
            "a trickler was served for {cut:?}"
        );
    }
}

#[test]
fn a_refused_client_reads_the_refusal_not_a_broken_pipe() {
    // A server that refuses and has closed before the client sent its hello.
    let dir = Scratch::new("refused");
    let path = dir.0.join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stream = UnixStream::connect(&path).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let denied = Response::error(ErrorKind::Denied, "uid 65534 may not use this socket");
    conn.write_all(&encode_frame(&denied).unwrap()).unwrap();
    drop(conn);
    match Client::over(stream, "late", Duration::from_secs(2)) {
        Err(ClientError::Handshake(m)) => assert!(m.contains("65534"), "{m}"),
        Err(e) => panic!("refusal not seen: {e}"),
        Ok(_) => panic!("handshake succeeded against a refusing server"),
    }
}
