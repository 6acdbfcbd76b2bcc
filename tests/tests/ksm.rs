//! KSM with real KVM guests and the kernel's ksmd: identical guests merge once mergeable (set
//! at start, or later through the control socket), random ones do not, and the server's KSM
//! controller gives the system its settings back when turned off or dropped. Every test takes
//! `KsmState` first: one KSM test at a time on the host, knobs restored even on failure.

use memout_protocol::control::{KsmMode as WireMode, Request, Response};
use memout_server::Server;
use memout_server::control::Client;
use memout_server::ksm::{ControllerConfig, KsmMode, KsmSysfs, TunerParams};
use memout_test_support::ksm::{self, KsmState};
use memout_test_support::wait_until as wait;
use memout_tests::{Piece, needs_kvm, require};
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, run_guest};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Each guest's working set.
const SET_MIB: u64 = 32;
const SET_PAGES: u64 = SET_MIB * MIB / 4096;

/// A server whose KSM controller scans fast, settings saved under a unique name.
fn server(tag: &str) -> Server {
    let s = Server::builder().build().unwrap();
    let mut cfg = ControllerConfig::system();
    cfg.on = (4000, 10);
    cfg.saved_path = std::env::temp_dir().join(format!("memout-ksm-{tag}-{}", std::process::id()));
    assert!(s.configure_ksm(cfg));
    s
}

/// Runs two `ksmfill` guests (`content`: 0 identical, 1 random) named `{tag}0`, `{tag}1`;
/// `mergeable` says which start mergeable. Once both hold their data, `check` runs; then they
/// finish and must find their data intact.
fn pair(s: &Server, tag: &str, content: u32, mergeable: [bool; 2], check: impl FnOnce()) {
    let img = GuestImage::parse(memout_vmm::images::get("ksmfill").unwrap().to_vec()).unwrap();
    let cfgs: Vec<RunConfig> = (0..2)
        .map(|i| RunConfig {
            name: format!("{tag}{i}"),
            region_size: 256 * MIB,
            quota_bytes: (SET_MIB + 16) * MIB,
            arg: SET_MIB as u32 | content << 16,
            timeout: Duration::from_secs(180),
            mergeable: mergeable[i],
            ..Default::default()
        })
        .collect();
    std::thread::scope(|sc| {
        let runs: Vec<_> = cfgs
            .iter()
            .map(|c| sc.spawn(|| run_guest(s, &img, c).unwrap()))
            .collect();
        wait("both guests to fill their memory", 120, || {
            cfgs.iter().all(|c| {
                s.registry()
                    .find(&c.name)
                    .is_some_and(|g| g.stats().resident_pages >= SET_PAGES)
            })
        });
        // A moment for the fill's last writes after its last fault.
        std::thread::sleep(Duration::from_millis(200));
        check();
        for c in &cfgs {
            c.finish.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        for r in runs {
            let r = r.join().unwrap();
            assert!(r.passed(), "{:?}\n{}", r.outcome, r.output.join("\n"));
        }
    });
}

fn merged(s: &Server, name: &str) -> u64 {
    s.registry().find(name).unwrap().ksm_pages().unwrap()
}

/// Waits for `n` more complete KSM scans than now.
fn scans(k: &KsmSysfs, n: u64) {
    let base = k.counters().unwrap().full_scans;
    wait("KSM scans", 60, || {
        k.counters().unwrap().full_scans >= base + n
    });
}

#[test]
fn identical_mergeable_guests_merge_and_others_do_not() {
    if !needs_kvm("ksm") || !require(Piece::Ksm, "ksm") {
        return;
    }
    let _state = KsmState::take();
    let s = server("merge");
    let k = KsmSysfs::system();
    s.ksm().set_mode(KsmMode::On).unwrap();

    // Identical content, both mergeable: nearly every page merges, and reads back intact.
    pair(&s, "same", 0, [true, true], || {
        wait("identical guests to merge", 60, || {
            merged(&s, "same0") * 10 >= SET_PAGES * 9 && merged(&s, "same1") * 10 >= SET_PAGES * 9
        });
    });
    // Random content: nothing to merge.
    pair(&s, "rand", 1, [true, true], || {
        scans(&k, 3);
        let m = merged(&s, "rand0") + merged(&s, "rand1");
        assert!(m * 20 < SET_PAGES, "{m} random pages merged");
    });
    // Identical, one mergeable: nothing merges until the other is made mergeable through the
    // control socket.
    let sock = std::env::temp_dir().join(format!("memout-ksm-ctl-{}.sock", std::process::id()));
    let _ctl = s.serve_control(&sock).unwrap();
    pair(&s, "half", 0, [true, false], || {
        scans(&k, 3);
        assert_eq!((merged(&s, "half0"), merged(&s, "half1")), (0, 0));
        let mut c = Client::connect(&sock, "ksm-test", Duration::from_secs(30)).unwrap();
        let r = c
            .request(&Request::SetMergeable {
                guest: "half1".into(),
                on: true,
            })
            .unwrap();
        assert_eq!(r, Response::Done);
        wait("the second guest to merge", 60, || {
            merged(&s, "half1") * 10 >= SET_PAGES * 9
        });
        match c.request(&Request::Ksm { set: None }).unwrap() {
            Response::Ksm(r) => {
                assert_eq!(r.mode, WireMode::On);
                assert!(r.pages_sharing >= SET_PAGES * 9 / 10, "{r:?}");
                let g = r.guests.iter().find(|g| g.name == "half1").unwrap();
                assert!(
                    g.mergeable && g.merged_pages.unwrap() * 10 >= SET_PAGES * 9,
                    "{r:?}"
                );
            }
            r => panic!("{r:?}"),
        }
        // Unknown guests are refused by name.
        let r = c
            .request(&Request::SetMergeable {
                guest: "nobody".into(),
                on: true,
            })
            .unwrap();
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
    });
    s.ksm().set_mode(KsmMode::Off).unwrap();
}

#[test]
fn the_controller_gives_the_system_its_settings_back() {
    if !require(Piece::Ksm, "ksm") {
        return;
    }
    let _state = KsmState::take();
    let found = ksm::set_distinct();
    let knobs = ksm::knobs;
    {
        let s = server("ctl");
        s.ksm().set_mode(KsmMode::On).unwrap();
        assert_eq!(knobs(), ("1".into(), "4000".into(), "10".into()));
        s.ksm().set_mode(KsmMode::Off).unwrap();
        assert_eq!(knobs(), found);
        // Dropping the server (and its controller) restores too.
        s.ksm().set_mode(KsmMode::On).unwrap();
    }
    assert_eq!(knobs(), found);

    // auto: with the guests' memory said to exceed RAM, ksmd runs and scans 50 pages fewer
    // per decision (free memory is above the threshold), never below 64.
    let s = Server::builder().build().unwrap();
    let mut cfg = ControllerConfig::system();
    cfg.tuner = TunerParams {
        interval: Duration::from_millis(50),
        ..Default::default()
    };
    cfg.saved_path = std::env::temp_dir().join(format!("memout-ksm-auto-{}", std::process::id()));
    let saved = cfg.saved_path.clone();
    let ctl = memout_server::ksm::KsmController::new(cfg, Box::new(|| 1 << 40));
    ctl.set_mode(KsmMode::Auto).unwrap();
    assert!(saved.exists(), "settings saved before the first change");
    wait("auto to settle at the floor", 10, || {
        knobs().0 == "1" && knobs().1 == "64"
    });
    drop(ctl);
    assert_eq!(knobs(), found);
    assert!(
        !saved.exists(),
        "the saved settings are removed once restored"
    );
    drop(s);
}
