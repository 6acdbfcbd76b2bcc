//! The host failing to back a frame (ENOMEM from UFFDIO_COPY, injected through the same path)
//! stops that guest with a clear error; the server and the other guests carry on.

use memout_server::{GuestFault, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{GuestSetup, Outcome, RunConfig, run_guest};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn populate_enomem_stops_only_that_guest() {
    if !needs_kvm("host-oom") {
        return;
    }
    let server = Server::builder().build().unwrap();
    let img = GuestImage::parse(memout_vmm::images::get("workload").unwrap().to_vec()).unwrap();
    let cfg = |name: &str| RunConfig {
        name: name.into(),
        arg: 64,
        quota_bytes: 128 << 20,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    std::thread::scope(|s| {
        let victim = s.spawn(|| {
            let mut c = cfg("victim");
            c.setup = Some(GuestSetup(Arc::new(|h| {
                h.inject_populate_failure(4096, libc::ENOMEM)
            })));
            run_guest(&server, &img, &c).unwrap()
        });
        let bystander = s.spawn(|| run_guest(&server, &img, &cfg("bystander")).unwrap());
        let v = victim.join().unwrap();
        match &v.outcome {
            Outcome::Stopped(GuestFault::HostPopulate { errno, gpa }) => {
                assert_eq!(*errno, libc::ENOMEM);
                assert!(*gpa >= memout_vmm::layout::REGION_GPA);
                let msg = v.outcome.to_string();
                assert!(
                    msg.contains("Cannot allocate memory") && msg.contains("host could not back"),
                    "{msg}"
                );
            }
            other => panic!("victim: {other:?}\n{}", v.output.join("\n")),
        }
        assert_eq!(
            v.stats.resident_pages, 4096,
            "exactly the budget was backed"
        );
        let b = bystander.join().unwrap();
        assert!(
            b.passed(),
            "bystander: {}\n{}",
            b.outcome,
            b.output.join("\n")
        );
    });
    // The server still serves new guests afterwards.
    let again = run_guest(&server, &img, &cfg("after")).unwrap();
    assert!(again.passed(), "{}", again.outcome);
}
