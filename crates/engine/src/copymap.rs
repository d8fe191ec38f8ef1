//! `copy`'s local map of what it learned between two repositories (see [`CopyMap`]):
//! local state in the state directory, never part of a repository.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sqlvault_format::ChunkId;

use crate::error::{Result, io_err};
use crate::local::{cache_dir, write_private_with};
use crate::runs::RunMap;

/// What `copy` learned about chunk ids between two repositories: the destination's id
/// of each source chunk it has read. Ids are keyed hashes under each repository's own
/// secret, so without this map a later copy would fetch and re-hash every chunk again
/// just to learn its destination id. The file is MACed under the destination's key: a
/// damaged map would point snapshots at the wrong data, so it is used whole or not at all.
///
/// In use the map is a [`RunMap`] on local disk (64 bytes an entry there, under one in
/// memory): 128 MiB for an 8 GiB database copied once would not fit copy's budget.
/// The file (`SQLVCPM2`): the magic, the pairs sorted by source id (64 bytes each),
/// their count (u64 LE), a keyed BLAKE3 MAC of all that.
#[derive(Debug)]
pub(crate) struct CopyMap {
    pub map: RunMap<32>,
    /// Entries when last loaded or saved (to save only after real growth).
    pub saved: u64,
    /// Pairs learned since (an id read again counts again: an upper bound).
    added: u64,
}

const COPY_MAGIC: &[u8; 8] = b"SQLVCPM2";

fn copy_map_path(home: &Path, dst_id: &str, src_id: &str) -> PathBuf {
    cache_dir(home, dst_id).join(format!("copy-from-{src_id}"))
}

impl CopyMap {
    /// The saved map, or an empty one when there is none or it is damaged; its
    /// entries are copied into a [`RunMap`] in `scratch` as they are checked, so what
    /// is used is what was verified.
    pub(crate) fn load(
        home: &Path,
        dst_id: &str,
        src_id: &str,
        keys: &sqlvault_format::RepoKeys,
        scratch: tempfile::TempDir,
    ) -> Result<CopyMap> {
        Self::load_from(&copy_map_path(home, dst_id, src_id), keys, scratch)
    }

    fn load_from(path: &Path, keys: &sqlvault_format::RepoKeys, scratch: tempfile::TempDir) -> Result<CopyMap> {
        let where_ = scratch.path().display().to_string();
        let e = |e| io_err(format!("cannot write the copy map to {where_}"), e);
        let mut map = RunMap::create(scratch).map_err(e)?;
        let Ok(f) = fs::File::open(path) else {
            return Ok(CopyMap {
                map,
                saved: 0,
                added: 0,
            });
        };
        let mut loaded = 0u64;
        let ok = Self::read_into(f, keys, &mut map, &mut loaded);
        match ok {
            Ok(true) => Ok(CopyMap {
                map,
                saved: loaded,
                added: 0,
            }),
            Ok(false) | Err(_) => {
                tracing::warn!("ignoring damaged copy map {}", path.display());
                map.clear().map_err(e)?;
                Ok(CopyMap {
                    map,
                    saved: 0,
                    added: 0,
                })
            }
        }
    }

    /// Streams the file into `map` as one run: `Ok(false)` when it is damaged.
    fn read_into(
        f: fs::File,
        keys: &sqlvault_format::RepoKeys,
        map: &mut RunMap<32>,
        loaded: &mut u64,
    ) -> std::io::Result<bool> {
        use std::io::Read;
        let len = f.metadata()?.len();
        let Some(body) = len.checked_sub(8 + 8 + 32) else {
            return Ok(false);
        };
        if !body.is_multiple_of(64) {
            return Ok(false);
        }
        let count = body / 64;
        let mut r = std::io::BufReader::with_capacity(1 << 16, f);
        let mut mac = keys.mac_hasher();
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != COPY_MAGIC {
            return Ok(false);
        }
        mac.update(&magic);
        let mut w = map.run_writer();
        let mut rec = [0u8; 64];
        for _ in 0..count {
            r.read_exact(&mut rec)?;
            mac.update(&rec);
            let (s, d) = rec.split_at(32);
            if w.push(&ChunkId(s.try_into().unwrap()), d.try_into().unwrap()).is_err() {
                return Ok(false);
            }
        }
        let mut tail = [0u8; 40];
        r.read_exact(&mut tail)?;
        mac.update(&tail[..8]);
        let mac_ok = blake3::Hash::from(*mac.finalize().as_bytes())
            == blake3::Hash::from(<[u8; 32]>::try_from(&tail[8..]).unwrap());
        if !mac_ok || u64::from_le_bytes(tail[..8].try_into().unwrap()) != count {
            return Ok(false);
        }
        w.finish()?;
        *loaded = count;
        Ok(true)
    }

    /// Records that `src` is `dst` in the destination.
    pub(crate) fn insert(&mut self, src: ChunkId, dst: ChunkId) -> std::io::Result<()> {
        self.added += 1;
        self.map.insert(src, dst.0)
    }

    /// Whether the map has grown by half since it was loaded or saved (counted by
    /// pairs learned, not by the runs on disk, which hold an id once per run).
    pub(crate) fn grown(&self) -> bool {
        self.added > self.saved / 2
    }

    /// Saves the map (sorted, streamed), MACed under `keys`.
    pub(crate) fn save(
        &mut self,
        home: &Path,
        dst_id: &str,
        src_id: &str,
        keys: &sqlvault_format::RepoKeys,
    ) -> Result<()> {
        self.save_to(&copy_map_path(home, dst_id, src_id), keys)
    }

    fn save_to(&mut self, path: &Path, keys: &sqlvault_format::RepoKeys) -> Result<()> {
        let mut count = 0u64;
        let map = &mut self.map;
        write_private_with(path, |w| {
            let mut mac = keys.mac_hasher();
            let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
            w.write_all(COPY_MAGIC)?;
            mac.update(COPY_MAGIC);
            map.for_each_sorted(|s, d| {
                w.write_all(&s.0)?;
                w.write_all(d)?;
                mac.update(&s.0);
                mac.update(d);
                count += 1;
                Ok(())
            })?;
            w.write_all(&count.to_le_bytes())?;
            mac.update(&count.to_le_bytes());
            w.write_all(mac.finalize().as_bytes())?;
            w.flush()
        })?;
        self.saved = count;
        self.added = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_map_round_trips_and_is_dropped_whole_when_damaged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let scratch = || tempfile::TempDir::new_in(dir.path()).unwrap();
        let path = dir.path().join("cache").join("copy-from-x");
        let keys = sqlvault_format::RepoSecret::generate().keys();
        let mut m = CopyMap::load_from(&path, &keys, scratch()).unwrap();
        // More than one run, and an id inserted twice.
        let n = crate::runs::PENDING as u32 + 50;
        let pair = |i: u32| {
            let h = *blake3::hash(&i.to_le_bytes()).as_bytes();
            (ChunkId(h), ChunkId(*blake3::hash(&h).as_bytes()))
        };
        for i in 0..n {
            let (s, d) = pair(i);
            m.insert(s, d).unwrap();
        }
        m.insert(pair(3).0, pair(3).1).unwrap();
        assert!(m.grown(), "an empty map that learned pairs has grown");
        m.save_to(&path, &keys).unwrap();
        assert_eq!(m.saved, n as u64);
        assert!(!m.grown());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = CopyMap::load_from(&path, &keys, scratch()).unwrap();
        assert_eq!(back.saved, n as u64);
        for i in (0..n).step_by(101) {
            assert_eq!(back.map.get(&pair(i).0).unwrap(), Some(pair(i).1.0));
        }
        assert_eq!(back.map.get(&ChunkId([0xee; 32])).unwrap(), None);
        // Another repository's key, one flipped bit, a truncation: nothing is used.
        let empty = |m: CopyMap| m.saved == 0 && m.map.len() == 0;
        let other = sqlvault_format::RepoSecret::generate().keys();
        assert!(empty(CopyMap::load_from(&path, &other, scratch()).unwrap()));
        let mut b = fs::read(&path).unwrap();
        for at in [3, 20, b.len() - 40, b.len() - 1] {
            b[at] ^= 1;
            fs::write(&path, &b).unwrap();
            assert!(
                empty(CopyMap::load_from(&path, &keys, scratch()).unwrap()),
                "bit at {at}"
            );
            b[at] ^= 1;
        }
        fs::write(&path, &b[..b.len() - 1]).unwrap();
        assert!(empty(CopyMap::load_from(&path, &keys, scratch()).unwrap()));
        fs::write(&path, &b[..b.len() - 64]).unwrap();
        assert!(empty(CopyMap::load_from(&path, &keys, scratch()).unwrap()));
        assert!(empty(
            CopyMap::load_from(&dir.path().join("absent"), &keys, scratch()).unwrap()
        ));
    }
}
