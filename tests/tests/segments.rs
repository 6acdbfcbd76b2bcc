//! Shared segments with real KVM guests: four guests map one 64 MiB segment and read exactly
//! what the host loaded, while the host holds one copy; their writes are refused and counted;
//! bad requests are refused with nothing mapped; a segment removed while mapped goes with its
//! last mapping.

use memout_server::Server;
use memout_server::segment::{Access, Removal};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, run_guest};
use memout_vmm::segments::guest_pattern;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SEG_MIB: u64 = 64;

#[test]
fn four_guests_share_one_copy_and_cannot_write_it() {
    if !needs_kvm("segments") {
        return;
    }
    let s = Server::builder().build().unwrap();
    s.segments()
        .register("lib", &guest_pattern(SEG_MIB * MIB), Access::All)
        .unwrap();
    s.segments()
        .register(
            "secret",
            b"not for you",
            Access::Guests(["someone-else".to_string()].into()),
        )
        .unwrap();
    let img = GuestImage::parse(memout_vmm::images::get("segment").unwrap().to_vec()).unwrap();
    let cfgs: Vec<RunConfig> = (0..4)
        .map(|i| RunConfig {
            name: format!("seg{i}"),
            region_size: 64 * MIB,
            quota_bytes: 32 * MIB,
            // Guest 0 also checks the refusals.
            arg: SEG_MIB as u32 | if i == 0 { 1 << 16 } else { 0 },
            timeout: Duration::from_secs(120),
            ..Default::default()
        })
        .collect();
    std::thread::scope(|sc| {
        let runs: Vec<_> = cfgs
            .iter()
            .map(|c| sc.spawn(|| run_guest(&s, &img, c).unwrap()))
            .collect();
        let lib = || s.segments().list().into_iter().find(|i| i.name == "lib");
        let ready = || {
            lib().is_some_and(|i| i.guests.len() == 4)
                && cfgs.iter().all(|c| {
                    s.registry()
                        .find(&c.name)
                        .is_some_and(|g| g.segment_writes_refused() >= 1)
                })
                // Guest 0's six refusal checks are done before the removal below.
                && s.registry()
                    .find("seg0")
                    .is_some_and(|g| g.stats().request_errors >= 6)
        };
        let end = Instant::now() + Duration::from_secs(60);
        while !ready() {
            if Instant::now() > end || runs.iter().any(|r| r.is_finished()) {
                for c in &cfgs {
                    c.finish.store(true, SeqCst);
                }
                let rs: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
                panic!(
                    "the guests did not all map lib: {:?}",
                    rs.iter()
                        .map(|r| (&r.outcome, r.output.join("\n")))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let info = lib().unwrap();
        // One copy on the host: the segment's own pages, whatever the number of guests.
        assert!(
            info.host_bytes >= SEG_MIB * MIB && info.host_bytes <= (SEG_MIB + 2) * MIB,
            "{info:?}"
        );
        for c in &cfgs {
            let g = s.registry().find(&c.name).unwrap();
            assert_eq!(
                g.mapped_segments(),
                vec![("lib".into(), 2 << 30, SEG_MIB * MIB)]
            );
            assert!(
                g.stats().resident_pages * 4096 < 4 * MIB,
                "the segment is not in the guest's own memory"
            );
        }
        // Removed while mapped: no new mappings, gone with the last.
        assert_eq!(s.segments().remove("lib").unwrap(), Removal::Pending(4));
        for c in &cfgs {
            c.finish.store(true, SeqCst);
        }
        for r in runs {
            let r = r.join().unwrap();
            assert!(r.passed(), "{:?}\n{}", r.outcome, r.output.join("\n"));
        }
    });
    assert!(s.segments().list().iter().all(|i| i.name != "lib"));
    assert_eq!(s.segments().remove("secret").unwrap(), Removal::Removed);
}

/// Registering, listing and removing through the control socket, with a guest mapping the
/// segment meanwhile; bad requests are refused by name and change nothing.
#[test]
fn segments_through_the_control_socket() {
    use memout_protocol::control::{Request, Response};
    use memout_server::control::Client;
    if !needs_kvm("segments") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("memout-seg-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lib.bin");
    std::fs::write(&file, guest_pattern(4 * MIB)).unwrap();
    let s = Server::builder().build().unwrap();
    let _ctl = s.serve_control(dir.join("ctl.sock")).unwrap();
    let mut c =
        Client::connect(&dir.join("ctl.sock"), "seg-test", Duration::from_secs(30)).unwrap();
    let mut ask = |r: Request| c.request(&r).unwrap();
    let add = |name: &str, path: &std::path::Path, guests: &[&str]| Request::RegisterSegment {
        name: name.into(),
        path: path.to_string_lossy().into_owned(),
        guests: guests.iter().map(|g| g.to_string()).collect(),
    };
    assert_eq!(ask(add("lib", &file, &[])), Response::Done);
    assert_eq!(ask(add("secret", &file, &["someone-else"])), Response::Done);
    for bad in [
        add("lib", &file, &[]),                     // duplicate
        add("no/slash", &file, &[]),                // bad name
        add("gone", &dir.join("missing.bin"), &[]), // no file
        Request::RemoveSegment {
            name: "nope".into(),
        },
    ] {
        assert!(
            matches!(ask(bad.clone()), Response::Error { .. }),
            "{bad:?}"
        );
    }
    let img = GuestImage::parse(memout_vmm::images::get("segment").unwrap().to_vec()).unwrap();
    let cfg = RunConfig {
        name: "ctlseg".into(),
        region_size: 64 * MIB,
        quota_bytes: 32 * MIB,
        arg: 4 | 1 << 16,
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    std::thread::scope(|sc| {
        let run = sc.spawn(|| run_guest(&s, &img, &cfg).unwrap());
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match ask(Request::ListSegments) {
                // Mapped, and its six refusal checks done (each a refused request).
                Response::Segments(l)
                    if l.iter().any(|x| x.name == "lib" && x.guests == ["ctlseg"])
                        && s.registry()
                            .find("ctlseg")
                            .is_some_and(|g| g.stats().request_errors >= 6) =>
                {
                    let x = l.iter().find(|x| x.name == "lib").unwrap();
                    assert_eq!((x.bytes, x.mapped_bytes), (4 * MIB, 4 * MIB));
                    assert!(l.iter().any(|x| x.name == "secret"
                        && x.access == Some(vec!["someone-else".to_string()])));
                    break;
                }
                Response::Segments(_) => {}
                r => panic!("{r:?}"),
            }
            assert!(
                Instant::now() < end && !run.is_finished(),
                "the guest did not map lib"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            ask(Request::RemoveSegment { name: "lib".into() }),
            Response::SegmentRemoved {
                pending_mappings: 1
            }
        );
        cfg.finish.store(true, SeqCst);
        let r = run.join().unwrap();
        assert!(r.passed(), "{:?}\n{}", r.outcome, r.output.join("\n"));
    });
    match ask(Request::ListSegments) {
        Response::Segments(l) => assert_eq!(
            l.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            ["secret"]
        ),
        r => panic!("{r:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
