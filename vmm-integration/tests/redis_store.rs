//! Evicting to Redis (`memout run --eviction store --store redis://…`), against a real
//! `redis-server` each test starts on a loopback port: a 512 MiB working set under a 128 MiB
//! budget runs to completion with no data errors, and its keys are gone when the guest ends;
//! keys a crashed instance of the same name left are swept at start (and no one else's); an
//! unreachable server is a clear error that does not show the password; a full server
//! (`maxmemory`, `noeviction`) leaves frames resident and is reported; a server restarted
//! empty, or killed, in the middle of a run stops the guest with an error naming the frame,
//! never silent zeros. Over TLS with a password the run works with the right CA and is refused
//! with an untrusted one or a wrong password; on a three-master Redis Cluster every master
//! holds part of the guest's memory.

use memout_test_support::redis::RedisServer;
use memout_test_support::redis_cluster::RedisCluster;
use memout_test_support::{Piece, require_all};
use serde_json::Value;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ready(test: &str) -> bool {
    require_all(&[Piece::Kvm, Piece::Uffd, Piece::Redis], test)
}

/// `memout run memwork` evicting to `url`: `mib` working set (hot-cold, 30 % writes, 10 % zero
/// pages), `kops` thousand accesses, under `budget`.
fn memwork(url: &str, instance: &str, mib: u64, kops: u32, budget: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_memout"));
    c.args([
        "run",
        "memwork",
        "--no-control",
        "--json",
        "--timeout",
        "300",
    ])
    .args(["--region", &format!("{}M", (2 * mib).next_power_of_two())])
    .args(["--quota", &format!("{mib}M")])
    .args(["--param", &format!("{mib},2,30,10,0,{kops},1")])
    .args(["--eviction", "store", "--store", url, "--budget", budget])
    .args(["--store-instance", instance, "--name", "far"]);
    c
}

fn report(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn memwork_line(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.starts_with("MEMWORK"))
        .unwrap_or_default()
        .to_string()
}

/// The run's report, once checked: the guest passed with no bad word, more than
/// `evicted_pages` were evicted, some swapped back in, and no eviction failed.
fn swapped_cleanly(o: &Output, evicted_pages: u64) -> Value {
    let r = report(o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(r["passed"], true, "{r}\n{err}");
    assert!(memwork_line(&r).ends_with(" bad 0"), "{r}");
    let stat = |k: &str| r["stats"][k].as_u64().unwrap();
    assert!(stat("evictions_pages") > evicted_pages, "{r}");
    assert!(stat("swapins_pages") > 0, "{r}");
    assert_eq!(stat("evict_errors"), 0, "{r}");
    r
}

fn instance(tag: &str) -> String {
    format!("test-{tag}-{}", std::process::id())
}

fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_512_mib_set_under_a_128_mib_budget_runs_on_redis_and_leaves_no_keys() {
    if !ready("redis_store") {
        return;
    }
    let redis = RedisServer::start(0);
    let o = memwork(&redis.url(), &instance("big"), 512, 100, "128M")
        .output()
        .unwrap();
    let r = swapped_cleanly(&o, 384 << 8);
    let stat = |k: &str| r["stats"][k].as_u64().unwrap();
    assert!(stat("resident_pages") <= (128 << 8) + 512, "{r}");
    assert_eq!(keys(&redis, "memout:*"), Vec::<String>::new());
}

#[test]
fn the_startup_sweep_takes_a_crashed_instances_keys_and_no_one_elses() {
    if !ready("redis_store") {
        return;
    }
    let redis = RedisServer::start(0);
    let me = instance("sweep");
    let mine = format!("memout:{me}:far:3");
    let theirs = format!("memout:{me}-other:far:3");
    for k in [&mine, &theirs] {
        assert_eq!(redis.cli(&["HSET", k, "0", "x"]).trim(), "1");
    }
    let o = memwork(&redis.url(), &me, 16, 1, "8M").output().unwrap();
    assert_eq!(report(&o)["passed"], true);
    assert_eq!(keys(&redis, "memout:*"), vec![theirs]);
}

#[test]
fn an_unreachable_store_is_a_clear_error_without_the_password() {
    if !ready("redis_store") {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let url = format!("redis://:hunter2secret@127.0.0.1:{port}/0");
    let t = Instant::now();
    let o = memwork(&url, &instance("down"), 16, 1, "8M")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unreachable") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2secret"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "it gives up after its retry time"
    );
}

#[test]
fn a_full_store_leaves_frames_resident_and_reports_it() {
    if !ready("redis_store") {
        return;
    }
    let redis = RedisServer::start(8 << 20); // 8 MiB, noeviction
    let o = memwork(&redis.url(), &instance("full"), 64, 10, "16M")
        .output()
        .unwrap();
    let r = report(&o);
    assert_eq!(r["passed"], true, "{r}");
    assert!(memwork_line(&r).ends_with(" bad 0"), "{r}");
    assert!(r["stats"]["evict_errors"].as_u64().unwrap() > 0, "{r}");
    // What could not be evicted stayed resident: above the 16 MiB budget.
    assert!(
        r["stats"]["resident_pages"].as_u64().unwrap() > 16 << 8,
        "{r}"
    );
}

/// Starts a long hot-cold run and returns once it has memory in Redis.
fn running_with_keys(redis: &RedisServer, tag: &str) -> Child {
    running_on(&redis.url(), &[], tag, &[redis])
}

/// Starts a long hot-cold run on `url` (with `args`) and returns once `nodes` hold 8 keys.
fn running_on(url: &str, args: &[&str], tag: &str, nodes: &[&RedisServer]) -> Child {
    let child = memwork(url, &instance(tag), 64, 100_000, "16M")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while nodes
        .iter()
        .map(|n| keys(n, "memout:*").len())
        .sum::<usize>()
        < 8
    {
        assert!(t.elapsed() < Duration::from_secs(30), "nothing was evicted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn stopped_with(child: Child, what: &str) {
    let o = child.wait_with_output().unwrap();
    let r = report(&o);
    let outcome = r["outcome"].as_str().unwrap_or_default().to_string();
    assert_eq!(r["passed"], false, "{r}");
    eprintln!("stopped: {outcome}");
    assert!(
        outcome.contains("cannot read evicted frame at guest-physical address 0x")
            && outcome.contains(what),
        "{outcome}"
    );
}

#[test]
fn a_store_restarted_empty_stops_the_guest_naming_the_frame() {
    if !ready("redis_store") {
        return;
    }
    let mut redis = RedisServer::start(0);
    let child = running_with_keys(&redis, "restart");
    redis.restart_empty();
    stopped_with(child, "is missing from Redis key memout:");
}

#[test]
fn a_store_killed_mid_run_stops_the_guest_after_retrying() {
    if !ready("redis_store") {
        return;
    }
    let mut redis = RedisServer::start(0);
    let child = running_with_keys(&redis, "kill");
    redis.kill();
    stopped_with(child, "unreachable");
}

fn failed_without(o: &Output, secret: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains(secret), "the password is shown: {err}");
    err
}

#[test]
fn tls_with_a_password_runs_and_refuses_untrusted_or_wrong_credentials() {
    if !ready("redis_store") {
        return;
    }
    let pw = "tls-test-pw-7f3a";
    let redis = RedisServer::start_tls(pw);
    let o = memwork(&redis.url(), &instance("tls"), 64, 20, "16M")
        .arg("--store-ca")
        .arg(redis.ca_path())
        .output()
        .unwrap();
    swapped_cleanly(&o, 48 << 8);
    assert_eq!(keys(&redis, "memout:*"), Vec::<String>::new());

    // The system's CAs do not know the test CA.
    let o = memwork(&redis.url(), &instance("tls-ca"), 16, 1, "8M")
        .output()
        .unwrap();
    let err = failed_without(&o, pw);
    assert!(err.contains("UnknownIssuer"), "{err}");
    // A wrong password.
    let wrong = redis.url().replace(pw, "wrong-pw-91c2");
    let o = memwork(&wrong, &instance("tls-pw"), 16, 1, "8M")
        .arg("--store-ca")
        .arg(redis.ca_path())
        .output()
        .unwrap();
    let err = failed_without(&o, "wrong-pw-91c2");
    assert!(
        err.contains("refused") && err.contains("authentication failed"),
        "{err}"
    );
    // Plain TCP to the TLS port, and a CA for a plain URL.
    let plain = format!("redis://:{pw}@127.0.0.1:{}/0", redis.port());
    let o = memwork(&plain, &instance("tls-plain"), 16, 1, "8M")
        .output()
        .unwrap();
    failed_without(&o, pw);
    let o = memwork(&plain, &instance("tls-plain"), 16, 1, "8M")
        .arg("--store-ca")
        .arg(redis.ca_path())
        .output()
        .unwrap();
    let err = failed_without(&o, pw);
    assert!(err.contains("does not use TLS"), "{err}");
}

#[test]
fn a_cluster_spreads_the_guests_memory_over_every_master() {
    if !ready("redis_store") {
        return;
    }
    let cluster = RedisCluster::start();
    let o = memwork(&cluster.url(), &instance("cluster"), 128, 50, "32M")
        .arg("--store-cluster")
        .output()
        .unwrap();
    swapped_cleanly(&o, 96 << 8);
    for n in cluster.nodes() {
        let calls = n.cli(&["INFO", "commandstats"]);
        for cmd in ["cmdstat_hset:calls=", "cmdstat_hmget:calls="] {
            assert!(calls.contains(cmd), "node {}: no {cmd}\n{calls}", n.port());
        }
        assert_eq!(n.cli(&["DBSIZE"]).trim(), "0", "node {}", n.port());
    }
}

#[test]
fn a_cluster_master_lost_mid_run_stops_the_guest_naming_the_frame() {
    if !ready("redis_store") {
        return;
    }
    let mut cluster = RedisCluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes().iter().collect();
    let child = running_on(&cluster.url(), &["--store-cluster"], "cluster-kill", &nodes);
    cluster.kill_node(2);
    stopped_with(child, "(cluster) unreachable");
}
