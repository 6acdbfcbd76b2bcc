//! Shared helpers for memout's workspace-level integration tests, which run real KVM guests.
//! What a test needs from the host is checked by [`memout_test_support`]: a missing piece
//! fails the test naming it, unless the user opted out with `MEMOUT_ALLOW_SKIP`.
#![deny(missing_docs)]

pub use memout_test_support::{Piece, require, require_all};

/// True if KVM guests can run here (KVM and userfaultfd with kernel faults). A missing piece
/// fails the test naming it, or skips it with one loud line if the user opted out of it.
pub fn needs_kvm(test: &str) -> bool {
    require_all(&[Piece::Kvm, Piece::Uffd], test)
}
