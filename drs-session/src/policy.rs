//! [`ReconnectPolicy`]: when a session dials again, and when it gives up.

use std::time::Duration;

/// How a session waits between failed dials, and when it stops trying.
///
/// The delay before retry `n` (1-based) is
/// `min(initial_delay × multiplier^(n−1), max_delay)`, less a random part
/// of up to `jitter` of it (so clients that lost the same server do not
/// all dial again at the same instant). After a connection is lost the
/// first dial is immediate; the delays are between failures.
///
/// | setting | default |
/// |---|---|
/// | `initial_delay` | 100 ms |
/// | `multiplier` | 2 |
/// | `max_delay` | 5 s |
/// | `jitter` | 0.5 (a delay is drawn from [d/2, d]) |
/// | `max_attempts` | none: retries forever |
/// | `deadline` | none: no limit on the time spent reconnecting |
///
/// ```
/// use std::time::Duration;
/// let policy = drs_session::ReconnectPolicy::default()
///     .max_delay(Duration::from_secs(2))
///     .max_attempts(Some(10));
/// assert_eq!(policy.max_attempts, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The delay after the first failed dial.
    pub initial_delay: Duration,
    /// The factor each further failure multiplies the delay by (at least 1).
    pub multiplier: f64,
    /// The longest delay.
    pub max_delay: Duration,
    /// The share of each delay that is random, from 0 (none) to 1.
    pub jitter: f64,
    /// Dials after which the session gives up (counted from the loss of a
    /// connection, or from the start); `None` for no limit.
    pub max_attempts: Option<u32>,
    /// How long the session keeps dialing after a loss (or from the start)
    /// before it gives up; `None` for no limit.
    pub deadline: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: 0.5,
            max_attempts: None,
            deadline: None,
        }
    }
}

impl ReconnectPolicy {
    /// Sets the delay after the first failure.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the growth factor (values below 1 count as 1).
    pub fn multiplier(mut self, factor: f64) -> Self {
        self.multiplier = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Sets the longest delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the random share of each delay (clamped to 0..=1).
    pub fn jitter(mut self, share: f64) -> Self {
        self.jitter = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Sets the attempt limit (`Some(0)` counts as `Some(1)`).
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts.map(|n| n.max(1));
        self
    }

    /// Sets the limit on time spent reconnecting.
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The delay after failed dial number `attempt` (1-based), before
    /// jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let max = self.max_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The delay after failed dial number `attempt`, with `unit` (a random
    /// number in 0..1) taking away up to the jitter share.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt);
        base.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0))
    }
}

/// A small generator for jitter (splitmix64): no need for a cryptographic
/// source to spread reconnects.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(time ^ seed.rotate_left(32))
    }

    /// A number in 0..1.
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(4), Duration::from_millis(800));
        assert_eq!(p.base_delay(7), Duration::from_secs(5));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_takes_at_most_its_share() {
        let p = ReconnectPolicy::default().jitter(0.5);
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(50));
        let none = ReconnectPolicy::default().jitter(0.0);
        assert_eq!(none.delay(3, 0.9), Duration::from_millis(400));
    }

    #[test]
    fn settings_are_clamped() {
        let p = ReconnectPolicy::default()
            .jitter(7.0)
            .multiplier(0.1)
            .max_attempts(Some(0));
        assert_eq!(p.jitter, 1.0);
        assert_eq!(p.multiplier, 1.0);
        assert_eq!(p.max_attempts, Some(1));
        assert_eq!(p.base_delay(9), p.initial_delay);
        assert_eq!(ReconnectPolicy::default().jitter(f64::NAN).jitter, 0.0);
    }

    #[test]
    fn jitter_units_are_spread_in_0_1() {
        let mut j = Jitter::new(7);
        let draws: Vec<f64> = (0..1000).map(|_| j.unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let low = draws.iter().filter(|u| **u < 0.5).count();
        assert!((300..700).contains(&low), "{low} of 1000 below 0.5");
    }
}
