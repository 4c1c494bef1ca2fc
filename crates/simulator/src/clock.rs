//! Wall-clock timestamps in the upstream's own format (RFC 3339 UTC, 7 fractional digits), issued
//! strictly increasing so that every change the simulator makes gets a distinct `lastUpdateTime`.

use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// The upstream's timestamps have 100 ns resolution (7 fractional digits, .NET ticks), so the
/// simulator counts time in 100 ns ticks since the Unix epoch.
pub const TICKS_PER_SEC: i64 = 10_000_000;
pub const TICKS_PER_DAY: i64 = 86_400 * TICKS_PER_SEC;

/// Formats ticks like the real API: `2024-05-01T10:11:12.1234567Z`.
pub fn format_ticks(ticks: i64) -> String {
    let secs = ticks.div_euclid(TICKS_PER_SEC);
    let frac = ticks.rem_euclid(TICKS_PER_SEC);
    let dt = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        frac
    )
}

/// Entra's error bodies carry their timestamp in another format: `2024-05-01 10:11:12Z`.
pub(crate) fn format_entra_timestamp(dt: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// The current wall-clock time in ticks.
pub fn now_ticks() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 100).unwrap_or(i64::MAX)
}

/// Hands out "now" in ticks, never the same value twice and never going backwards, even if the
/// system clock steps back: pollers filter on `lastUpdateTime ge X`, and two changes sharing
/// one timestamp (or a change older than the one before) would make such polling miss changes.
#[derive(Debug, Default)]
pub(crate) struct StrictClock {
    last: AtomicI64,
}

impl StrictClock {
    /// A clock whose first reading will be later than `floor`.
    pub(crate) fn after(floor: i64) -> Self {
        Self {
            last: AtomicI64::new(floor),
        }
    }

    /// "Now", strictly later than every earlier reading and than `not_before`.
    pub(crate) fn next(&self, not_before: i64) -> i64 {
        let wall = now_ticks();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = wall.max(prev + 1).max(not_before + 1);
            match self
                .last
                .compare_exchange_weak(prev, candidate, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return candidate,
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_seven_fractional_digits() {
        // 2024-05-01T10:11:12Z is 1714558272 s after the epoch.
        let t = 1_714_558_272 * TICKS_PER_SEC + 1_234_567;
        assert_eq!(format_ticks(t), "2024-05-01T10:11:12.1234567Z");
        assert_eq!(
            format_ticks(1_714_558_272 * TICKS_PER_SEC),
            "2024-05-01T10:11:12.0000000Z"
        );
    }

    #[test]
    fn strict_clock_never_repeats() {
        let clock = StrictClock::after(0);
        let mut prev = 0;
        for _ in 0..10_000 {
            let t = clock.next(0);
            assert!(t > prev);
            prev = t;
        }
        let far = now_ticks() + TICKS_PER_DAY;
        assert!(clock.next(far) > far);
    }
}
