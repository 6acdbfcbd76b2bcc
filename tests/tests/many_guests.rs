//! One server, several real KVM guests at once: different quotas and policies, each verifying
//! its own data, while another guest floods its doorbell with garbage.

use memout_server::{PopulatePolicy, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, run_guest};
use std::time::Duration;

#[test]
fn four_guests_and_a_flooder_share_one_server() {
    if !needs_kvm("many-guests") {
        return;
    }
    let server = Server::builder().build().unwrap();
    let workload =
        GuestImage::parse(memout_vmm::images::get("workload").unwrap().to_vec()).unwrap();
    let malicious =
        GuestImage::parse(memout_vmm::images::get("malicious").unwrap().to_vec()).unwrap();
    // (working set MiB, quota MiB, policy)
    let guests = [
        (24u32, 32u64, PopulatePolicy::PerPage),
        (80, 96, PopulatePolicy::default()),
        (120, 128, PopulatePolicy::Eager),
        (150, 160, PopulatePolicy::default()),
    ];
    std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            let cfg = RunConfig {
                name: "flooder".into(),
                arg: 11,
                quota_bytes: 16 << 20,
                timeout: Duration::from_secs(120),
                ..Default::default()
            };
            run_guest(&server, &malicious, &cfg).unwrap()
        });
        let handles: Vec<_> = guests
            .iter()
            .enumerate()
            .map(|(i, &(mib, quota, policy))| {
                let (server, workload) = (&server, &workload);
                s.spawn(move || {
                    let cfg = RunConfig {
                        name: format!("guest{i}"),
                        arg: mib,
                        quota_bytes: quota << 20,
                        policy,
                        timeout: Duration::from_secs(120),
                        ..Default::default()
                    };
                    (mib, quota, run_guest(server, workload, &cfg).unwrap())
                })
            })
            .collect();
        for h in handles {
            let (mib, quota, r) = h.join().unwrap();
            assert!(
                r.passed(),
                "guest with {mib} MiB: {}\n{}",
                r.outcome,
                r.output.join("\n")
            );
            assert_eq!(r.stats.quota_pages, quota * 256);
            assert_eq!(r.stats.allocated_pages, mib as u64 * 256);
            assert_eq!(r.stats.resident_pages, mib as u64 * 256);
            assert_eq!(r.stats.violations, 0);
            // Half the pieces were freed and their memory returned.
            assert_eq!(r.stats.bytes_returned, (mib as u64).div_ceil(2) << 20);
        }
        let f = flooder.join().unwrap();
        assert!(
            f.passed(),
            "flooder: {}\n{}",
            f.outcome,
            f.output.join("\n")
        );
        assert!(f.stats.request_errors >= 3000 * 64 - 100, "{:?}", f.stats);
        assert_eq!(f.stats.allocated_pages, 0);
    });
}
