//! Dates as labimg writes them: a leaf module (no crate imports), so anything may use
//! it without an import cycle (tests/module_graph.rs).

/// A Unix time in UTC as (year, month 1–12, day 1–31, seconds into the day), by
/// Howard Hinnant's civil-from-days.
pub fn civil(epoch: u64) -> (i64, i64, i64, u64) {
    let days = (epoch / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, epoch % 86_400)
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since the epoch.
pub fn rfc3339(epoch: u64) -> String {
    let (y, m, d, secs) = civil(epoch);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
