//! Kernel event times: `bpf_ktime_get_ns()` is CLOCK_MONOTONIC; the contract's `time` is
//! wall-clock UTC, RFC 3339 with nanoseconds.

/// Converts CLOCK_MONOTONIC nanoseconds to Unix-epoch nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns.
    offset_ns: i128,
}

impl WallClock {
    /// Samples both clocks now.
    pub fn now() -> Self {
        // Bracket the realtime read with two monotonic reads and use their midpoint, so
        // the offset is good to well under a microsecond.
        let before = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let after = clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            offset_ns: real - (before + after) / 2,
        }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }

    pub fn rfc3339(&self, mono_ns: u64) -> String {
        rfc3339(self.unix_ns(mono_ns))
    }
}

/// CLOCK_MONOTONIC now, in ns: the time base of kernel events.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Formats Unix-epoch nanoseconds as `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ`.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// Parses what [`rfc3339`] writes (and any `YYYY-MM-DDThh:mm:ss[.fraction]Z`) back into
/// Unix-epoch nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<i128> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[10] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let fraction = &text[19..text.len() - 1];
    let nanos = match fraction.strip_prefix('.') {
        Some(digits) if !digits.is_empty() && digits.len() <= 9 => {
            digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
        }
        None if fraction.is_empty() => 0,
        _ => return None,
    };
    let secs = days_from_civil(year, month as u32, day as u32) * 86_400
        + hour * 3600
        + minute * 60
        + second;
    Some(secs as i128 * 1_000_000_000 + nanos as i128)
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29T12:34:56.000000007Z (a leap day)
        assert_eq!(
            rfc3339(951_827_696_000_000_007),
            "2000-02-29T12:34:56.000000007Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for ns in [
            0i128,
            951_827_696_000_000_007,
            1_795_000_000_123_456_789,
            -1,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
        }
        assert_eq!(
            parse_rfc3339("2026-11-24T21:03:06Z").map(|n| n % 1_000_000_000),
            Some(0)
        );
        assert_eq!(parse_rfc3339("2026-11-24 21:03:06Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn wall_clock_tracks_the_system_clock() {
        let clock = WallClock::now();
        let real = clock_ns(libc::CLOCK_REALTIME);
        let converted = clock.unix_ns(monotonic_ns());
        assert!(
            (converted - real).abs() < 50_000_000,
            "{converted} vs {real}"
        );
        assert_eq!(WallClock::with_offset(5).unix_ns(10), 15);
    }
}
