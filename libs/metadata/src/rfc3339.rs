//! RFC 3339 times, as lease expiry labels carry them
//! (`containerd.io/gc.expire=2026-01-02T15:04:05Z`): parsed as Go's
//! `time.RFC3339` layout parses (fractional seconds allowed, an offset or
//! `Z` required), formatted in UTC to the second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_errdefs::{Error, Result};

/// Parses an RFC 3339 date and time; InvalidArgument if it is not one.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime> {
    let bad =
        |why: &str| Error::invalid_argument(format!("{text:?} is not an RFC 3339 time: {why}"));
    let b = text.as_bytes();
    if b.len() < 20 {
        return Err(bad("too short"));
    }
    let digits = |range: std::ops::Range<usize>| -> Result<u32> {
        let part = b.get(range).ok_or_else(|| bad("too short"))?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let expect = |at: usize, want: u8| -> Result<()> {
        if b.get(at) == Some(&want) {
            Ok(())
        } else {
            Err(bad(&format!("expected '{}' at {at}", want as char)))
        }
    };
    let year = digits(0..4)?;
    expect(4, b'-')?;
    let month = digits(5..7)?;
    expect(7, b'-')?;
    let day = digits(8..10)?;
    expect(10, b'T')?;
    let hour = digits(11..13)?;
    expect(13, b':')?;
    let minute = digits(14..16)?;
    expect(16, b':')?;
    let second = digits(17..19)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day"));
    }

    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 9 {
            return Err(bad("fractional seconds need 1 to 9 digits"));
        }
        let fraction = digits(start..end)?;
        nanos = fraction * 10u32.pow(9 - (end - start) as u32);
        at = end;
    }
    let offset_seconds: i64 = match b.get(at) {
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            let hours = digits(at + 1..at + 3)?;
            expect(at + 3, b':')?;
            let minutes = digits(at + 4..at + 6)?;
            if hours > 23 || minutes > 59 {
                return Err(bad("no such offset"));
            }
            let offset = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return Err(bad("expected 'Z' or an offset like +01:00 at the end")),
    };

    let days = days_from_civil(i64::from(year), month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    Ok(if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
            + Duration::from_nanos(nanos.into())
    })
}

/// Formats a time as RFC 3339 in UTC, to the second
/// (`2026-01-02T15:04:05Z`). Times before the epoch format as the epoch.
pub fn format_rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A time as RFC 3339 in UTC with nanoseconds, as `ctr events` shows
/// event times: `2024-05-01T12:00:00.123456789Z`.
pub fn format_rfc3339_nanos(time: SystemTime) -> String {
    let to_the_second = format_rfc3339(time);
    let nanos = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}.{nanos:09}Z", to_the_second.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    #[test]
    fn parses_what_gos_rfc3339_layout_accepts() {
        let cases: &[(&str, SystemTime)] = &[
            ("1970-01-01T00:00:00Z", at(0, 0)),
            ("2009-11-10T23:00:00Z", at(1_257_894_000, 0)),
            ("2009-11-10T23:00:00.5Z", at(1_257_894_000, 500_000_000)),
            ("2009-11-11T00:00:00+01:00", at(1_257_894_000, 0)),
            ("2009-11-10T22:30:00-00:30", at(1_257_894_000, 0)),
            ("2000-02-29T12:00:00Z", at(951_825_600, 0)),
            (
                "2038-01-19T03:14:08.123456789Z",
                at(2_147_483_648, 123_456_789),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text).unwrap(), *want, "{text}");
        }
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59Z").unwrap(),
            UNIX_EPOCH - Duration::from_secs(1)
        );
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "tomorrow",
            "2009-11-10",
            "2009-11-10 23:00:00Z",
            "2009-11-10T23:00:00",
            "2009-11-10T23:00:00+0100",
            "2009-13-10T23:00:00Z",
            "2001-02-29T23:00:00Z",
            "2009-11-10T24:00:00Z",
            "2009-11-10T23:00:00.Z",
            "2009-11-10T23:00:00.1234567891Z",
            "2009-11-10T23:00:00Zjunk",
            "２009-11-10T23:00:00Z",
        ] {
            let err = parse_rfc3339(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn formats_back_to_what_it_parses() {
        for seconds in [
            0u64,
            951_825_600,
            1_257_894_000,
            4_102_444_800,
            1_709_164_799,
        ] {
            let time = at(seconds, 0);
            let text = format_rfc3339(time);
            assert_eq!(parse_rfc3339(&text).unwrap(), time, "{text}");
        }
        assert_eq!(format_rfc3339(at(1_257_894_000, 7)), "2009-11-10T23:00:00Z");
    }
}
