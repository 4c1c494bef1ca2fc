//! Timestamps: the hand-written ISO-8601 parser (filter literals and incident data) and the
//! canonical printer.

use std::fmt::Write as _;

use ::time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Fractional-second digits accepted in a filter literal: 100 ns ticks are what the upstream
/// (.NET `DateTimeOffset`) can represent, and what the canonical form prints.
pub(crate) const LITERAL_FRACTION_DIGITS: usize = 7;
/// Fractional-second digits accepted in an incident's own timestamps when evaluating.
pub const INCIDENT_FRACTION_DIGITS: usize = 9;
/// Prints `YYYY-MM-DDTHH:MM:SS[.fffffff]Z` in UTC; the fraction is omitted when zero.
/// The canonical form of a timestamp: UTC, `YYYY-MM-DDTHH:MM:SS[.fffffff]Z`.
pub fn format_datetime(t: OffsetDateTime) -> String {
    let mut out = String::new();
    write_datetime(t, &mut out);
    out
}

pub(crate) fn write_datetime(t: OffsetDateTime, out: &mut String) {
    let t = t.to_offset(UtcOffset::UTC);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let ticks = t.nanosecond() / 100;
    if ticks != 0 {
        let _ = write!(out, ".{ticks:07}");
    }
    out.push('Z');
}

/// Parses an ISO-8601 / RFC 3339 timestamp `YYYY-MM-DDTHH:MM[:SS[.f+]](Z|±HH:MM)` into UTC.
/// Hand-written rather than `time`'s RFC 3339 parser because OData allows omitting seconds and
/// because the digit limit differs between filter literals and incident data.
pub fn parse_timestamp(s: &str, max_fraction_digits: usize) -> Result<OffsetDateTime, String> {
    let b = s.as_bytes();
    let mut pos = 0usize;
    let digits = |pos: &mut usize, n: usize| -> Option<u32> {
        let chunk = b.get(*pos..*pos + n)?;
        if !chunk.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *pos += n;
        Some(chunk.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let expect = |pos: &mut usize, options: &[u8]| -> Option<u8> {
        let c = *b.get(*pos)?;
        if options.contains(&c) {
            *pos += 1;
            Some(c)
        } else {
            None
        }
    };
    const SHAPE: &str = "expected a timestamp like 2024-05-01T00:00:00Z";

    let year = digits(&mut pos, 4).ok_or(SHAPE)?;
    expect(&mut pos, b"-").ok_or(SHAPE)?;
    let month = digits(&mut pos, 2).ok_or(SHAPE)?;
    expect(&mut pos, b"-").ok_or(SHAPE)?;
    let day = digits(&mut pos, 2).ok_or(SHAPE)?;
    expect(&mut pos, b"Tt").ok_or(SHAPE)?;
    let hour = digits(&mut pos, 2).ok_or(SHAPE)?;
    expect(&mut pos, b":").ok_or(SHAPE)?;
    let minute = digits(&mut pos, 2).ok_or(SHAPE)?;
    let mut second = 0;
    let mut nanos = 0;
    if expect(&mut pos, b":").is_some() {
        second = digits(&mut pos, 2).ok_or(SHAPE)?;
        if expect(&mut pos, b".").is_some() {
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let count = pos - start;
            if count == 0 {
                return Err("expected digits after the decimal point of the seconds".into());
            }
            if count > max_fraction_digits {
                return Err(format!(
                    "at most {max_fraction_digits} fractional-second digits are supported"
                ));
            }
            nanos = b[start..pos]
                .iter()
                .chain(std::iter::repeat(&b'0'))
                .take(9)
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        }
    }
    let offset_seconds: i32 = match expect(&mut pos, b"Zz+-") {
        Some(b'Z' | b'z') => 0,
        Some(sign) => {
            let oh = digits(&mut pos, 2).ok_or(SHAPE)?;
            expect(&mut pos, b":").ok_or(SHAPE)?;
            let om = digits(&mut pos, 2).ok_or(SHAPE)?;
            if oh > 23 || om > 59 {
                return Err("the UTC offset is out of range".into());
            }
            let magnitude = (oh * 3600 + om * 60) as i32;
            if sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        None => return Err("a UTC designator ('Z') or offset (like +02:00) is required after the time".into()),
    };
    if pos != b.len() {
        return Err(SHAPE.into());
    }

    // Every component below was read from at most 4 digits, so the narrowing casts are exact.
    let month = Month::try_from(month as u8).map_err(|_| "the month is out of range")?;
    let date = Date::from_calendar_date(year as i32, month, day as u8).map_err(|_| "the date does not exist")?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err("the time of day is out of range".into());
    }
    let time = Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos)
        .map_err(|_| "the time of day is out of range")?;
    let offset = UtcOffset::from_whole_seconds(offset_seconds).map_err(|_| "the UTC offset is out of range")?;
    let local = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let utc = OffsetDateTime::from_unix_timestamp_nanos(local.unix_timestamp_nanos())
        .map_err(|_| "the timestamp is out of range")?;
    // Years outside 1..=9999 cannot be printed back as four digits.
    if !(1..=9999).contains(&utc.year()) {
        return Err("the timestamp is out of range (years 0001 to 9999 in UTC)".into());
    }
    Ok(utc)
}
