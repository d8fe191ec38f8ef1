//! Retention policies with restic's semantics (`restic forget --keep-*`), as pure data:
//! which snapshots a policy keeps, and the rules that kept each.
//!
//! Snapshots are ordered by the creation time recorded in their manifest, newest first,
//! never by object names (WAL-G once deleted its newest backups by sorting names).
//! For each calendar rule (hourly, daily, weekly, monthly, yearly) with a count `n`, a
//! snapshot is kept when its bucket (its hour, day, ISO week, month or year in local
//! time) differs from the bucket of the last snapshot that rule kept, until `n` buckets
//! *that hold snapshots* have been kept — so `--keep-daily 7` keeps the newest snapshot of
//! each of the last seven days on which there were snapshots, however far apart. As in
//! restic 0.16+, the oldest snapshot is also kept by a rule that still has count left, so
//! a young repository keeps its whole history. `--keep-last n` keeps the `n` newest,
//! `--keep-within d` every snapshot no older than `d` before the newest one (not before
//! now: a host that stopped backing up does not lose its last snapshots to the clock).
//!
//! A snapshot whose recorded creation time is more than [`CLOCK_SKEW`] ahead of this
//! host's clock is *future-dated*: a backup host's clock far off, or a write-key holder
//! dating snapshots years ahead so that they would fill every bucket and push the real
//! ones out. A future-dated snapshot takes part in no rule — it is kept by none, uses up
//! no bucket and is not the newest `--keep-within` counts from — and is kept, marked
//! `future-dated`, for an operator to look at: forget never deletes it on its own.

use std::time::Duration;

use serde::Serialize;

/// How far ahead of this host's clock a snapshot's recorded creation time may be before
/// it is future-dated ([`is_future_dated`]): the one place this bound is set. Ten
/// minutes absorbs ordinary clock drift between backup hosts and this one.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);

/// Whether a snapshot created at `created_ms` is future-dated at `now_ms`: more than
/// [`CLOCK_SKEW`] ahead. Such a snapshot is never chosen as "the newest" by default
/// (restore, verify, drill), keeps no retention bucket, and is flagged where listed.
pub fn is_future_dated(created_ms: i64, now_ms: i64) -> bool {
    created_ms > now_ms.saturating_add(CLOCK_SKEW.as_millis() as i64)
}

/// How many snapshots to keep, by rule. All zero (and no `within`) is the empty policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Policy {
    /// The `n` newest snapshots.
    pub last: u32,
    /// The newest snapshot of each of the last `n` hours that have one.
    pub hourly: u32,
    /// … days.
    pub daily: u32,
    /// … ISO weeks.
    pub weekly: u32,
    /// … months.
    pub monthly: u32,
    /// … years.
    pub yearly: u32,
    /// Every snapshot made within this long before the newest one.
    pub within: Option<Duration>,
}

impl Policy {
    /// A policy that keeps nothing (the starting point for the builders).
    pub fn new() -> Policy {
        Policy::default()
    }
    /// Sets `--keep-last`.
    pub fn with_last(mut self, n: u32) -> Self {
        self.last = n;
        self
    }
    /// Sets `--keep-hourly`.
    pub fn with_hourly(mut self, n: u32) -> Self {
        self.hourly = n;
        self
    }
    /// Sets `--keep-daily`.
    pub fn with_daily(mut self, n: u32) -> Self {
        self.daily = n;
        self
    }
    /// Sets `--keep-weekly`.
    pub fn with_weekly(mut self, n: u32) -> Self {
        self.weekly = n;
        self
    }
    /// Sets `--keep-monthly`.
    pub fn with_monthly(mut self, n: u32) -> Self {
        self.monthly = n;
        self
    }
    /// Sets `--keep-yearly`.
    pub fn with_yearly(mut self, n: u32) -> Self {
        self.yearly = n;
        self
    }
    /// Sets `--keep-within`.
    pub fn with_within(mut self, d: Option<Duration>) -> Self {
        self.within = d;
        self
    }

    /// Whether the policy keeps nothing at all.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
    }
}

/// The calendar position of an instant, in the time zone the buckets are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// ISO 8601 week-numbering year.
    pub iso_year: i32,
    /// ISO 8601 week, 1–53.
    pub iso_week: u32,
}

/// One snapshot's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Index into the input slice.
    pub index: usize,
    /// Whether it stays.
    pub keep: bool,
    /// The rules that kept it (`"last snapshot"`, `"daily snapshot"`, `"oldest weekly
    /// snapshot"`, `"within 7d"` …, or `"future-dated"`); empty when removed.
    pub reasons: Vec<String>,
    /// Its creation time is future-dated ([`is_future_dated`]): kept, by no rule.
    pub future_dated: bool,
}

/// Applies `policy` to snapshots given by creation time (ms since the epoch), in any
/// order, at `now_ms`; returns one verdict per input, newest first. `civil` maps an
/// instant to its calendar position ([`local_civil`] for the local time zone, as restic
/// does). Future-dated snapshots ([`is_future_dated`]) come first, kept with the reason
/// `"future-dated"`; the rules apply to the others only.
pub fn apply(created_ms: &[i64], now_ms: i64, policy: &Policy, civil: impl Fn(i64) -> Civil) -> Vec<Verdict> {
    let mut order: Vec<usize> = (0..created_ms.len()).collect();
    // Newest first; equal times fall back to input order for a stable plan.
    order.sort_by(|&a, &b| created_ms[b].cmp(&created_ms[a]).then(a.cmp(&b)));
    let (future, order): (Vec<usize>, Vec<usize>) =
        order.into_iter().partition(|&i| is_future_dated(created_ms[i], now_ms));
    let newest = order.first().map(|&i| created_ms[i]);

    type Bucket = fn(&Civil, usize) -> i64;
    let mut rules: Vec<(u32, Bucket, &str, Option<i64>)> = vec![
        (policy.last, |_, nr| nr as i64, "last", None),
        (policy.hourly, |c, _| day_key(c) * 100 + c.hour as i64, "hourly", None),
        (policy.daily, |c, _| day_key(c), "daily", None),
        (
            policy.weekly,
            |c, _| c.iso_year as i64 * 100 + c.iso_week as i64,
            "weekly",
            None,
        ),
        (
            policy.monthly,
            |c, _| c.year as i64 * 100 + c.month as i64,
            "monthly",
            None,
        ),
        (policy.yearly, |c, _| c.year as i64, "yearly", None),
    ];
    let count = order.len();
    let future = future.into_iter().map(|i| Verdict {
        index: i,
        keep: true,
        reasons: vec!["future-dated".into()],
        future_dated: true,
    });
    let ruled = order.iter().enumerate().map(|(nr, &i)| {
        let t = created_ms[i];
        let cv = civil(t);
        let mut reasons = Vec::new();
        for (left, bucket, what, last) in rules.iter_mut() {
            if *left == 0 {
                continue;
            }
            let val = bucket(&cv, nr);
            let oldest = nr == count - 1;
            if Some(val) != *last || oldest {
                let reason = if Some(val) == *last {
                    format!("oldest {what} snapshot")
                } else {
                    format!("{what} snapshot")
                };
                reasons.push(reason);
                *last = Some(val);
                *left -= 1;
            }
        }
        if let (Some(d), Some(newest)) = (policy.within, newest)
            && t >= newest.saturating_sub(d.as_millis() as i64)
        {
            reasons.push(format!("within {}", describe(d)));
        }
        Verdict {
            index: i,
            keep: !reasons.is_empty(),
            reasons,
            future_dated: false,
        }
    });
    future.chain(ruled).collect()
}

fn day_key(c: &Civil) -> i64 {
    c.year as i64 * 10_000 + c.month as i64 * 100 + c.day as i64
}

/// A duration as the CLI takes it: the largest unit that divides it (`7d`, `36h`, `90s`).
pub fn describe(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// A time as sqlvault prints it: UTC, RFC 3339, to the second (`2024-05-01T12:00:00Z`).
pub fn iso_time(ms: i64) -> String {
    let c = utc_civil(ms);
    let secs = ms.div_euclid(1000).rem_euclid(60 * 60);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        secs / 60,
        secs % 60
    )
}

/// Calendar position in UTC.
pub fn utc_civil(ms: i64) -> Civil {
    let secs = ms.div_euclid(1000);
    civil_from_secs(secs, secs.div_euclid(86_400))
}

/// Calendar position in the local time zone (`TZ`, else /etc/localtime), as restic
/// counts its buckets.
pub fn local_civil(ms: i64) -> Civil {
    let t: libc::time_t = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own and reads only `t`.
    #[allow(unsafe_code)]
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    #[allow(unsafe_code)]
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return utc_civil(ms);
    }
    let local_secs = ms.div_euclid(1000) + tm.tm_gmtoff as i64;
    civil_from_secs(local_secs, local_secs.div_euclid(86_400))
}

/// `secs` are seconds of the (possibly shifted) clock; `days` its day number.
fn civil_from_secs(secs: i64, days: i64) -> Civil {
    let (y, m, d) = civil_from_days(days);
    let hour = (secs.rem_euclid(86_400) / 3600) as u32;
    // ISO week: the week (Monday first) holding the Thursday of this date's week.
    let weekday = (days + 3).rem_euclid(7); // 0 = Monday (1970-01-01 was a Thursday)
    let thursday = days - weekday + 3;
    let (iy, _, _) = civil_from_days(thursday);
    let jan1 = days_from_civil(iy, 1, 1);
    let iso_week = ((thursday - jan1) / 7 + 1) as u32;
    Civil {
        year: y,
        month: m,
        day: d,
        hour,
        iso_year: iy,
        iso_week,
    }
}

/// Howard Hinnant's civil_from_days.
fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Howard Hinnant's days_from_civil.
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = y as i64 - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn ms(y: i32, m: u32, d: u32, h: u32) -> i64 {
        (days_from_civil(y, m, d) * 86_400 + h as i64 * 3600) * 1000
    }

    /// A clock after every test date: nothing in these tests is future-dated.
    const NOW: i64 = i64::MAX / 2;

    fn kept(times: &[i64], p: Policy) -> Vec<i64> {
        let mut v: Vec<i64> = apply(times, NOW, &p, utc_civil)
            .into_iter()
            .filter(|v| v.keep)
            .map(|v| times[v.index])
            .collect();
        v.sort();
        v
    }

    #[test]
    fn calendar_positions_match_known_dates() {
        let c = utc_civil(ms(2026, 11, 26, 13));
        assert_eq!((c.year, c.month, c.day, c.hour), (2026, 11, 26, 13));
        // 2021-01-03 is a Sunday in ISO week 53 of 2020; 2021-01-04 starts week 1.
        let c = utc_civil(ms(2021, 1, 3, 0));
        assert_eq!((c.iso_year, c.iso_week), (2020, 53));
        let c = utc_civil(ms(2021, 1, 4, 0));
        assert_eq!((c.iso_year, c.iso_week), (2021, 1));
        // 2024-12-30 (Monday) is in ISO week 1 of 2025.
        let c = utc_civil(ms(2024, 12, 30, 5));
        assert_eq!((c.iso_year, c.iso_week), (2025, 1));
        assert_eq!(utc_civil(-1).year, 1969);
    }

    #[test]
    fn keep_last_keeps_the_newest_by_creation_time_not_input_order() {
        let times = [5 * H, H, 9 * H, 3 * H];
        assert_eq!(kept(&times, Policy::new().with_last(2)), vec![5 * H, 9 * H]);
    }

    #[test]
    fn daily_counts_days_that_have_snapshots() {
        let base = ms(2026, 3, 1, 0);
        // Four snapshots a day on days 0, 1, 2, then a gap, then day 10.
        let mut times = Vec::new();
        for day in [0, 1, 2, 10] {
            for h in [1, 7, 13, 19] {
                times.push(base + day * D + h * H);
            }
        }
        // The newest of each of the last three days that have snapshots: 10, 2, 1.
        assert_eq!(
            kept(&times, Policy::new().with_daily(3)),
            vec![base + D + 19 * H, base + 2 * D + 19 * H, base + 10 * D + 19 * H]
        );
        // More buckets than days: every day's newest, and the oldest snapshot too.
        assert_eq!(
            kept(&times, Policy::new().with_daily(10)),
            vec![
                base + H,
                base + 19 * H,
                base + D + 19 * H,
                base + 2 * D + 19 * H,
                base + 10 * D + 19 * H
            ]
        );
    }

    #[test]
    fn rules_combine_and_report_reasons() {
        let base = ms(2026, 1, 5, 0); // a Monday
        let times: Vec<i64> = (0..60).map(|i| base + i * D + 12 * H).collect();
        let p = Policy::new().with_last(2).with_daily(3).with_weekly(2).with_monthly(2);
        let v = apply(&times, NOW, &p, utc_civil);
        let newest = &v[0];
        assert_eq!(times[newest.index], base + 59 * D + 12 * H);
        assert_eq!(
            newest.reasons,
            vec!["last snapshot", "daily snapshot", "weekly snapshot", "monthly snapshot"]
        );
        let keep: Vec<_> = v.iter().filter(|v| v.keep).collect();
        // last 2 ∪ the newest of the last 3 days ∪ of the last 2 ISO weeks ∪ of the
        // last 2 months: 2026-01-05 + 59 days is Thu 2026-03-05; its ISO week began on
        // Mon 03-02, so the previous week's newest is Sun 03-01; February's is 02-28.
        let days: Vec<i64> = keep.iter().map(|v| (times[v.index] - base) / D).collect();
        assert_eq!(days, vec![59, 58, 57, 55, 54]);
        assert_eq!(keep[3].reasons, vec!["weekly snapshot"]);
        assert_eq!(keep[4].reasons, vec!["monthly snapshot"]);
        assert!(v.iter().filter(|v| !v.keep).all(|v| v.reasons.is_empty()));
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot() {
        let old = ms(2020, 1, 1, 0);
        let times = [old, old + 2 * D, old + 5 * D, old + 6 * D];
        let p = Policy::new().with_within(Some(Duration::from_secs(2 * 86_400)));
        // Years before now, yet the last two days before the newest are kept.
        assert_eq!(kept(&times, p), vec![old + 5 * D, old + 6 * D]);
        let v = apply(&times, NOW, &p, utc_civil);
        assert_eq!(v[0].reasons, vec!["within 2d"]);
    }

    #[test]
    fn the_empty_policy_keeps_nothing() {
        let times = [1, 2, 3];
        assert!(Policy::new().is_empty());
        assert!(kept(&times, Policy::new()).is_empty());
        assert!(apply(&[], NOW, &Policy::new().with_last(3), utc_civil).is_empty());
    }

    #[test]
    fn durations_are_described_in_their_largest_unit() {
        assert_eq!(describe(Duration::from_secs(7 * 86_400)), "1w");
        assert_eq!(describe(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(describe(Duration::from_secs(90)), "90s");
    }

    /// A write-key holder dates snapshots years ahead: were they ordered with the real
    /// ones they would be the newest of every bucket and `--keep-last`, and the
    /// `--keep-within` reference, and every real snapshot would go.
    #[test]
    fn future_dated_snapshots_keep_no_bucket_and_are_kept_marked() {
        let now = ms(2026, 3, 10, 12);
        let real: Vec<i64> = (0..10).map(|i| now - (9 - i) * D).collect(); // 10 days, one a day
        let mut times = real.clone();
        // One per day for 5 days, five years ahead, and one per year beyond.
        times.extend((0..5).map(|i| now + 5 * 365 * D + i * D));
        times.extend((6..9).map(|y| now + y * 365 * D));
        let p = Policy::new()
            .with_last(3)
            .with_daily(3)
            .with_yearly(2)
            .with_within(Some(Duration::from_secs(2 * 86_400)));
        let v = apply(&times, now, &p, utc_civil);
        assert_eq!(v.len(), times.len());
        // Every future-dated one is kept, flagged, and by no rule.
        let forged: Vec<&Verdict> = v.iter().filter(|v| times[v.index] > now).collect();
        assert_eq!(forged.len(), 8);
        for f in &forged {
            assert!(f.keep && f.future_dated, "{f:?}");
            assert_eq!(f.reasons, vec!["future-dated"]);
        }
        // The real ones get exactly what they would get with no forgery present.
        let alone = apply(&real, now, &p, utc_civil);
        let by_time = |vs: &[Verdict], ts: &[i64]| {
            let mut out: Vec<(i64, bool, Vec<String>)> = vs
                .iter()
                .filter(|v| !v.future_dated)
                .map(|v| (ts[v.index], v.keep, v.reasons.clone()))
                .collect();
            out.sort();
            out
        };
        assert_eq!(by_time(&v, &times), by_time(&alone, &real));
        // In particular the newest real snapshot holds its buckets and the within window.
        let newest = v.iter().find(|v| times[v.index] == now).unwrap();
        assert_eq!(
            newest.reasons,
            vec!["last snapshot", "daily snapshot", "yearly snapshot", "within 2d"]
        );
        assert_eq!(kept(&real, p).len(), alone.iter().filter(|v| v.keep).count());
    }

    #[test]
    fn the_skew_bound_is_exclusive_and_relative_to_now() {
        let now = ms(2026, 3, 10, 12);
        let skew = CLOCK_SKEW.as_millis() as i64;
        assert!(!is_future_dated(now + skew, now));
        assert!(is_future_dated(now + skew + 1, now));
        assert!(!is_future_dated(now - 365 * D, now));
        assert!(!is_future_dated(i64::MAX, i64::MAX));
        // A snapshot just inside the skew is an ordinary snapshot, and the newest.
        let v = apply(&[now - D, now + skew], now, &Policy::new().with_last(1), utc_civil);
        assert_eq!((v[0].index, v[0].keep, v[0].future_dated), (1, true, false));
        assert!(!v[1].keep);
    }
}
