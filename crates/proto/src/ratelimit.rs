//! Per-address rate limits: a token bucket per key, driven by an explicit clock (no I/O),
//! so the same limiter serves the REST API and WHEP and is tested in virtual time.
//!
//! Memory is bounded: at most `max_keys` buckets are kept; full buckets are forgotten
//! first (they hold nothing), and when every bucket is busy the new key is refused rather
//! than letting a flood of addresses grow the table.

use std::collections::HashMap;
use std::hash::Hash;

/// The key an address is limited under: IPv6 per /64 (one subscriber's network), IPv4
/// (also when mapped into IPv6) as itself.
pub fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut bytes = v6.octets();
                bytes[8..].fill(0);
                IpAddr::from(bytes)
            }
        },
        v4 => v4,
    }
}

/// How many requests a key may make: `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub per_minute: u32,
}

impl Rate {
    pub const fn new(burst: u32, per_minute: u32) -> Rate {
        Rate { burst, per_minute }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in thousandths, to refill smoothly with integer arithmetic.
    milli_tokens: u64,
    updated_ms: u64,
}

/// Token buckets keyed by `K` (an address, an address and a route…).
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> RateLimiter<K> {
        RateLimiter { rate, max_keys: max_keys.max(1), buckets: HashMap::new() }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.rate.burst.max(1)) * 1000
    }

    fn refill(&self, bucket: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(bucket.updated_ms);
        // per_minute tokens per 60 000 ms = per_minute milli-tokens per 60 ms.
        let gained = elapsed.saturating_mul(u64::from(self.rate.per_minute)) / 60;
        bucket.milli_tokens = bucket.milli_tokens.saturating_add(gained).min(self.capacity());
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
    }

    /// Takes one token for `key` at `now_ms`: `Ok(())`, or `Err(retry_after_secs)`.
    pub fn check(&mut self, key: &K, now_ms: u64) -> Result<(), u32> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.forget_full(now_ms);
            if self.buckets.len() >= self.max_keys {
                // Every bucket is busy (many addresses at once): the older half goes, so
                // a new address is never refused for others' traffic. Amortised, each
                // insertion pays for one eviction.
                self.forget_oldest_half();
            }
        }
        let full = Bucket { milli_tokens: self.capacity(), updated_ms: now_ms };
        let mut bucket = self.buckets.get(key).copied().unwrap_or(full);
        self.refill(&mut bucket, now_ms);
        let result = if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            Ok(())
        } else {
            Err(self.retry_after(bucket.milli_tokens))
        };
        self.buckets.insert(key.clone(), bucket);
        result
    }

    /// Seconds until a bucket holding `milli_tokens` has one whole token.
    fn retry_after(&self, milli_tokens: u64) -> u32 {
        let missing = 1000u64.saturating_sub(milli_tokens);
        let per_minute = u64::from(self.rate.per_minute.max(1));
        // missing milli-tokens at per_minute milli-tokens per 60 ms.
        let ms = (missing * 60).div_ceil(per_minute);
        ms.div_ceil(1000).clamp(1, 3600) as u32
    }

    /// Drops buckets that have refilled completely: they are the same as no bucket.
    fn forget_full(&mut self, now_ms: u64) {
        let capacity = self.capacity();
        let per_minute = u64::from(self.rate.per_minute);
        self.buckets.retain(|_, bucket| {
            let gained = now_ms.saturating_sub(bucket.updated_ms).saturating_mul(per_minute) / 60;
            bucket.milli_tokens.saturating_add(gained) < capacity
        });
    }

    /// Drops the half of the buckets that were used longest ago.
    fn forget_oldest_half(&mut self) {
        let mut by_age: Vec<(u64, K)> = self.buckets.iter().map(|(k, b)| (b.updated_ms, k.clone())).collect();
        by_age.sort_unstable_by_key(|(updated, _)| *updated);
        for (_, key) in by_age.into_iter().take(self.buckets.len().div_ceil(2)) {
            self.buckets.remove(&key);
        }
    }

    /// Keys with a bucket (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let mut limiter = RateLimiter::new(Rate::new(3, 60), 100);
        for _ in 0..3 {
            assert_eq!(limiter.check(&"a", 0), Ok(()));
        }
        assert_eq!(limiter.check(&"a", 0), Err(1), "one a second: retry in 1 s");
        assert_eq!(limiter.check(&"b", 0), Ok(()), "other keys are not affected");
        assert_eq!(limiter.check(&"a", 999), Err(1));
        assert_eq!(limiter.check(&"a", 1000), Ok(()));
        assert_eq!(limiter.check(&"a", 1000), Err(1));
        // A long pause refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(limiter.check(&"a", 1_000_000), Ok(()));
        }
        assert!(limiter.check(&"a", 1_000_000).is_err());
    }

    #[test]
    fn retry_after_says_when_a_token_is_back() {
        let mut limiter = RateLimiter::new(Rate::new(1, 2), 10);
        assert_eq!(limiter.check(&1, 0), Ok(()));
        assert_eq!(limiter.check(&1, 0), Err(30), "two a minute: one every 30 s");
        assert_eq!(limiter.check(&1, 21_000), Err(9));
        assert_eq!(limiter.check(&1, 30_000), Ok(()));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_keys_first() {
        let mut limiter = RateLimiter::new(Rate::new(1, 60), 2);
        assert!(limiter.check(&1, 0).is_ok());
        assert!(limiter.check(&2, 0).is_ok());
        assert!(limiter.check(&3, 1000).is_ok(), "refilled buckets are forgotten to make room");
        assert!(limiter.tracked() <= 2);
    }

    #[test]
    fn a_full_table_evicts_its_oldest_buckets_instead_of_refusing_new_keys() {
        let mut limiter = RateLimiter::new(Rate::new(1, 1), 4);
        for key in 0..4 {
            assert!(limiter.check(&key, key as u64).is_ok());
        }
        // Every bucket is empty and busy; a new key still gets its token.
        assert!(limiter.check(&99, 10).is_ok(), "a new address is not refused for others' traffic");
        assert!(limiter.tracked() <= 4);
        assert!(limiter.check(&3, 11).is_err(), "the newest buckets were kept");
        assert!(limiter.check(&0, 11).is_ok(), "the oldest went (and start full again)");
        for key in 100..10_000 {
            assert!(limiter.check(&key, 20).is_ok());
            assert!(limiter.tracked() <= 4, "bounded");
        }
    }

    #[test]
    fn clocks_that_step_back_do_not_mint_tokens() {
        let mut limiter = RateLimiter::new(Rate::new(1, 60), 10);
        assert!(limiter.check(&1, 10_000).is_ok());
        assert!(limiter.check(&1, 0).is_err());
        assert!(limiter.check(&1, 10_500).is_err());
        assert!(limiter.check(&1, 11_000).is_ok());
    }
}
