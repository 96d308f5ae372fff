//! Exponential backoff with jitter, the one used for every retry: reader
//! supervision and the MQTT publisher in the gateway, pcscd reconnects
//! here. Each delay is drawn from [d/2, d], with d doubling from `min` up
//! to `max`. The jitter keeps a fleet of gateways that lost the same broker
//! (or were powered up together) from retrying in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut prev_cap = 500;
        for _ in 0..12 {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= prev_cap / 2 && d <= prev_cap, "{d} vs {prev_cap}");
            prev_cap = (prev_cap * 2).min(60_000);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
