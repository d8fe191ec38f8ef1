//! Content-defined chunking for SQL-dump snapshots.
//!
//! A gear hash (`h = (h << 1) + GEAR[byte]`) over the stream; a chunk ends where the
//! top bits of `h` are all zero (the top bits depend on the last 64 bytes, not just the
//! last few). FastCDC's normalised chunking: before the average size a stricter mask
//! (one bit more), after it a looser one (one bit fewer), so sizes cluster around the
//! average. Boundaries depend only on nearby content, so an edit in one row moves at
//! most the chunks around it and every other chunk of the next dump dedups.
//!
//! The parameters are part of the repository format (docs/format.md): changing them
//! changes every boundary, which costs one full re-upload, never correctness.

use std::sync::OnceLock;

/// Chunker parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No chunk ends before this many bytes (except the last).
    pub min: usize,
    /// Target average; a power of two.
    pub avg: usize,
    /// Every chunk ends by this many bytes.
    pub max: usize,
}

/// The chunker of dump snapshots, format version 1: 256 B / 1 KiB / 4 KiB.
///
/// Small, because a 1% random row update touches a chunk per changed row: at ~120
/// bytes a row, a 1 KiB chunk holds ~9 rows, so ~9% of the chunks of an updated table
/// change; 2 KiB chunks change ~17% and 8 KiB ~50%. The price is metadata: 76 bytes a
/// chunk (index entry and sequence entry), ~15% on top of a first dump backup; measured
/// trade-off in docs/benchmarks.md.
pub const DUMP_CHUNKER: ChunkerParams = ChunkerParams {
    min: 256,
    avg: 1024,
    max: 4096,
};

impl ChunkerParams {
    /// How the parameters are recorded in a manifest.
    pub fn describe(&self) -> String {
        format!("gear-v1 min={} avg={} max={}", self.min, self.avg, self.max)
    }

    /// Length of the chunk that starts `data`. With `data.len() < max` the caller must
    /// be at the end of the stream (the remainder is one chunk or the cut point in it).
    pub fn cut(&self, data: &[u8]) -> usize {
        let n = data.len();
        if n <= self.min {
            return n;
        }
        let n = n.min(self.max);
        let bits = self.avg.trailing_zeros();
        let strict = !0u64 << (64 - (bits + 1));
        let loose = !0u64 << (64 - (bits - 1));
        let gear = gear();
        let mut h = 0u64;
        let mut i = self.min;
        let normal = self.avg.min(n);
        while i < normal {
            h = (h << 1).wrapping_add(gear[data[i] as usize]);
            if h & strict == 0 {
                return i + 1;
            }
            i += 1;
        }
        while i < n {
            h = (h << 1).wrapping_add(gear[data[i] as usize]);
            if h & loose == 0 {
                return i + 1;
            }
            i += 1;
        }
        n
    }
}

/// The 256 gear values: the BLAKE3 XOF of `"sqlvault gear v1"`, as little-endian u64s.
fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new()
            .update(b"sqlvault gear v1")
            .finalize_xof()
            .fill(&mut bytes);
        let mut g = [0u64; 256];
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            g[i] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        g
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = DUMP_CHUNKER.cut(rest);
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }

    fn text(seed: u64, lines: usize) -> Vec<u8> {
        let mut s = seed;
        let mut out = Vec::new();
        for i in 0..lines {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.extend_from_slice(format!("INSERT INTO t VALUES({i},'{:x}',{});\n", s, s >> 40).as_bytes());
        }
        out
    }

    #[test]
    fn sizes_stay_in_bounds_and_near_the_average() {
        let data = text(1, 40_000);
        let cs = chunks(&data);
        assert_eq!(cs.concat(), data);
        for c in &cs[..cs.len() - 1] {
            assert!((DUMP_CHUNKER.min..=DUMP_CHUNKER.max).contains(&c.len()), "{}", c.len());
        }
        let avg = data.len() / cs.len();
        assert!((800..1600).contains(&avg), "average {avg}");
    }

    #[test]
    fn an_edit_moves_only_nearby_boundaries() {
        let data = text(2, 20_000);
        let mut edited = data.clone();
        let at = data.len() / 2;
        edited.splice(at..at + 10, b"a longer replacement".iter().copied());
        let a = chunks(&data);
        let b = chunks(&edited);
        let set: std::collections::HashSet<&[u8]> = a.iter().copied().collect();
        let fresh = b.iter().filter(|c| !set.contains(*c)).count();
        assert!(fresh <= 3, "{fresh} chunks changed for one edit");
    }
}
