//! Rate limiting for log lines a guest can trigger: at most `burst` lines per window per guest,
//! then one line saying how many were suppressed.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// A per-guest log budget.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>, // window start, lines in window, suppressed
}

impl LogLimiter {
    /// At most `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// Returns `Some(suppressed_before)` if a line may be logged now, `None` if it must be
    /// dropped. `suppressed_before` counts lines dropped since the last one allowed.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock();
        if s.0.elapsed() >= self.window {
            *s = (Instant::now(), 0, s.2);
        }
        if s.1 < self.burst {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(10, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_then_reports_suppressed() {
        let l = LogLimiter::new(2, Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
    }
}
