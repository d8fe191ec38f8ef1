//! SQL literals that load back to exactly the value they were made from, with sqlvault's
//! loader and with the stock `sqlite3` shell of any version we know of.
//!
//! REAL is the hard case. The shortest decimal that round-trips under correct rounding
//! (what Rust prints) is not always read back exactly by SQLite: up to 3.42 its parser
//! computes `digits / 10^k` in x87 extended precision and rounds the result again to
//! double, which is wrong when the extended result lands exactly on a midpoint between
//! two doubles (about one value in two thousand). So a decimal is written only when it is
//! provably read back exactly by both kinds of parser; every other REAL is written as an
//! exact product of its integer mantissa and powers of two, which every SQLite evaluates
//! without rounding.

use std::io::Write;

const TWO_POW_53: f64 = 9_007_199_254_740_992.0;
const TWO_POW_62: u64 = 1 << 62;

/// Appends a literal for `v`.
pub(crate) fn push_real(out: &mut Vec<u8>, v: f64) {
    if v == 0.0 {
        out.extend_from_slice(if v.is_sign_negative() { b"-0.0" } else { b"0.0" });
        return;
    }
    if v.is_infinite() {
        // SQLite reads any decimal beyond the double range as ±Inf.
        out.extend_from_slice(if v < 0.0 { b"-9e999" } else { b"9e999" });
        return;
    }
    if v.is_nan() {
        // SQLite never stores NaN (it becomes NULL); kept total for safety.
        out.extend_from_slice(b"NULL");
        return;
    }
    let a = v.abs();
    if v.is_sign_negative() {
        out.push(b'-');
    }
    if a.fract() == 0.0 && a < TWO_POW_53 {
        // Integral values: "123.0" is read as the integer 123 converted once: exact.
        let _ = write!(out, "{}.0", a as u64);
        return;
    }
    if let Some((digits, e10)) = shortest(a)
        && decimal_is_exact_everywhere(a, digits, e10)
    {
        push_decimal(out, digits, e10);
        return;
    }
    push_exact(out, a);
}

/// The shortest decimal that round-trips (correct rounding): `digits × 10^e10`.
fn shortest(a: f64) -> Option<(u64, i32)> {
    let mut buf = [0u8; 40];
    let mut w = &mut buf[..];
    write!(w, "{a:e}").ok()?;
    let len = 40 - w.len();
    let s = std::str::from_utf8(&buf[..len]).ok()?;
    let (mant, exp) = s.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let mut digits: u64 = 0;
    let mut n = 0i32;
    for c in mant.bytes().filter(|c| *c != b'.') {
        digits = digits.checked_mul(10)?.checked_add((c - b'0') as u64)?;
        n += 1;
    }
    Some((digits, exp - (n - 1)))
}

/// Whether `digits × 10^e10` (which rounds correctly to `a`) is also read back as `a`
/// by SQLite ≤ 3.42, which rounds `digits / 10^k` (or `× 10^k`) to 64 bits first. That
/// double rounding can only go wrong when the exact value lies within 2^-64 (relative)
/// of a midpoint between `a` and a neighbour; the distance is computed exactly enough
/// with fused multiply-add, and anything near a midpoint is refused (with margin).
fn decimal_is_exact_everywhere(a: f64, digits: u64, e10: i32) -> bool {
    if digits as f64 >= TWO_POW_53 || !(-22..=22).contains(&e10) {
        return false;
    }
    let s = digits as f64; // exact: below 2^53
    let p10 = 10f64.powi(e10.abs()); // exact: 10^22 is the largest power of ten a double holds
    // diff = exact value − a
    let diff = if e10 >= 0 {
        let prod = s * p10;
        let lo = s.mul_add(p10, -prod); // s·p10 = prod + lo exactly
        (prod - a) + lo
    } else {
        let prod = a * p10;
        let lo = a.mul_add(p10, -prod); // a·p10 = prod + lo exactly
        ((s - prod) - lo) / p10
    };
    let bits = a.to_bits();
    let ulp = f64::from_bits(bits + 1) - a;
    let t = diff.abs() / (ulp / 2.0); // 0 = exactly a, 1 = on the midpoint
    const MARGIN: f64 = 1.0 / 512.0; // the danger zone is 2^-11 wide
    if (t - 1.0).abs() < MARGIN {
        return false;
    }
    // Below a power of two the neighbour is half as far: its midpoint is at t = 0.5.
    let power_of_two = bits & ((1u64 << 52) - 1) == 0;
    if power_of_two && diff < 0.0 && (t - 0.5).abs() < MARGIN {
        return false;
    }
    true
}

fn push_decimal(out: &mut Vec<u8>, digits: u64, e10: i32) {
    let ds = digits.to_string();
    let n = ds.len() as i32;
    if e10 >= 0 {
        // Large integral values: "1.5e20". (Below 2^53 integral values took the ".0" path.)
        out.extend_from_slice(&ds.as_bytes()[..1]);
        if n > 1 {
            out.push(b'.');
            out.extend_from_slice(&ds.as_bytes()[1..]);
        }
        let _ = write!(out, "e{}", e10 + n - 1);
        return;
    }
    let point = n + e10; // digits before the decimal point
    if point > 0 {
        out.extend_from_slice(&ds.as_bytes()[..point as usize]);
        out.push(b'.');
        out.extend_from_slice(&ds.as_bytes()[point as usize..]);
    } else if point >= -5 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-point) as usize));
        out.extend_from_slice(ds.as_bytes());
    } else {
        out.extend_from_slice(&ds.as_bytes()[..1]);
        if n > 1 {
            out.push(b'.');
            out.extend_from_slice(&ds.as_bytes()[1..]);
        }
        let _ = write!(out, "e{}", e10 + n - 1);
    }
}

/// `a = m × 2^q` written as `(CAST(m AS REAL)*2^62*…)` or `(…/2^62/…)`: every step
/// multiplies or divides by a power of two and every intermediate is representable,
/// so no step rounds, in any SQLite.
fn push_exact(out: &mut Vec<u8>, a: f64) {
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mut m, mut q) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    let tz = m.trailing_zeros().min(63) as i32;
    m >>= tz;
    q += tz;
    // The sign, if any, was written before: `-(CAST…)`.
    let _ = write!(out, "(CAST({m} AS REAL)");
    let op = if q >= 0 { '*' } else { '/' };
    let mut k = q.unsigned_abs();
    while k > 0 {
        let step = k.min(62);
        let factor = if step == 62 { TWO_POW_62 } else { 1u64 << step };
        let _ = write!(out, "{op}{factor}");
        k -= step;
    }
    out.push(b')');
}

/// Appends a TEXT literal for `bytes` (in UTF-8, as SQLite hands them out), or returns
/// `false` if the bytes are not UTF-8 and `utf8_db` is false (the caller decides).
///
/// Quotes are doubled; NUL, CR and LF are spliced in with `char()` so that every
/// statement stays on one line (diffable, and chunked on row boundaries more often);
/// bytes that are not UTF-8 become `CAST(X'…' AS TEXT)`, which keeps them as they are
/// in a UTF-8 database.
pub(crate) fn push_text(out: &mut Vec<u8>, bytes: &[u8], utf8_db: bool) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        if !utf8_db {
            return false;
        }
        out.extend_from_slice(b"CAST(");
        push_blob(out, bytes);
        out.extend_from_slice(b" AS TEXT)");
        return true;
    }
    out.push(b'\'');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let splice: &[u8] = match b {
            b'\'' => b"''",
            0 => b"'||char(0)||'",
            b'\n' => b"'||char(10)||'",
            b'\r' => b"'||char(13)||'",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(splice);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'\'');
    true
}

/// Appends `X'…'`.
pub(crate) fn push_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 3);
    out.extend_from_slice(b"X'");
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: f64) -> String {
        let mut o = Vec::new();
        push_real(&mut o, v);
        String::from_utf8(o).unwrap()
    }

    /// Evaluates a literal in SQLite and returns the bits.
    fn eval(sql: &str) -> u64 {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let v: f64 = c.query_row(&format!("SELECT {sql}"), [], |r| r.get(0)).unwrap();
        v.to_bits()
    }

    #[test]
    fn readable_where_safe_exact_everywhere() {
        assert_eq!(lit(123.45), "123.45");
        assert_eq!(lit(-2.5), "-2.5");
        assert_eq!(lit(7.0), "7.0");
        assert_eq!(lit(0.001), "0.001");
        assert_eq!(lit(1.5e20), "1.5e20");
        assert_eq!(lit(-0.0), "-0.0");
        assert_eq!(lit(f64::INFINITY), "9e999");
        // Values beyond the safe range take the exact form.
        assert!(lit(5e-324).starts_with("(CAST(1 AS REAL)/"), "{}", lit(5e-324));
        assert!(lit(1e308).starts_with("(CAST("));
        for v in [
            123.45,
            0.1 + 0.2,
            5e-324,
            2.2250738585072014e-308,
            1e308,
            f64::MAX,
            -f64::MIN_POSITIVE,
            1.0 / 3.0,
            -123_456_789.123_456_79,
            9007199254740993.0,
            1e-7,
            6.02214076e23,
        ] {
            assert_eq!(eval(&lit(v)), v.to_bits(), "{v:e} as {}", lit(v));
        }
        assert_eq!(eval("-0.0"), (-0.0f64).to_bits());
    }

    #[test]
    fn text_stays_on_one_line() {
        let mut o = Vec::new();
        assert!(push_text(&mut o, b"it's\na\0b\r", true));
        assert_eq!(o, b"'it''s'||char(10)||'a'||char(0)||'b'||char(13)||''");
        o.clear();
        assert!(push_text(&mut o, b"\xff\xfe", true));
        assert_eq!(o, b"CAST(X'fffe' AS TEXT)");
        assert!(!push_text(&mut Vec::new(), b"\xff", false));
    }
}
