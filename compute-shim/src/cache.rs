//! The version-safe read cache. An entry says: `key` had `value`, written at `version_lsn`,
//! and was still the newest version when read at `seen_at`. Since versions are immutable that
//! answers every read at an LSN in `[version_lsn, seen_at]` without crossing the network.

use std::sync::Arc;

use moka::sync::Cache;
use triad_protocol::Lsn;

#[derive(Clone, Debug)]
struct Cached {
    value: Option<Arc<Vec<u8>>>,
    version_lsn: Lsn,
    seen_at: Lsn,
}

pub(crate) struct ReadCache {
    cache: Option<Cache<Vec<u8>, Cached>>,
}

impl ReadCache {
    pub(crate) fn new(max_bytes: u64) -> ReadCache {
        let cache = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Vec<u8>, v: &Cached| {
                    (k.len() + v.value.as_ref().map_or(0, |v| v.len()) + 32).min(u32::MAX as usize) as u32
                })
                .build()
        });
        ReadCache { cache }
    }

    /// `Some((value, version_lsn))` when the cache can answer a read at `at`.
    pub(crate) fn get(&self, key: &[u8], at: Lsn) -> Option<(Option<Vec<u8>>, Lsn)> {
        let c = self.cache.as_ref()?.get(key)?;
        (c.version_lsn <= at && at <= c.seen_at)
            .then(|| (c.value.as_ref().map(|v| v.to_vec()), c.version_lsn))
    }

    /// The newest version the cache knows that is not newer than `at`, and whether it is known
    /// to be the newest at `at` (as [`ReadCache::get`] answers) or only a guess: a newer version
    /// may have been written between the entry's `seen_at` and `at`.
    pub(crate) fn get_guess(&self, key: &[u8], at: Lsn) -> Option<(Option<Vec<u8>>, Lsn, bool)> {
        let c = self.cache.as_ref()?.get(key)?;
        (c.version_lsn <= at).then(|| (c.value.as_ref().map(|v| v.to_vec()), c.version_lsn, at <= c.seen_at))
    }

    /// Records that a read at `at` returned `value` written at `version_lsn`.
    pub(crate) fn insert(&self, key: &[u8], value: Option<&[u8]>, version_lsn: Lsn, at: Lsn) {
        let Some(cache) = &self.cache else { return };
        let key = key.to_vec();
        let existing = cache.get(&key);
        match existing {
            // Same version seen later: widen the interval it is known valid for.
            Some(c) if c.version_lsn == version_lsn => {
                if at > c.seen_at {
                    cache.insert(key, Cached { seen_at: at, ..c });
                }
            }
            // A newer version replaces an older one; never let an older read shrink a newer entry.
            Some(c) if c.version_lsn > version_lsn => {}
            _ => cache
                .insert(key, Cached { value: value.map(|v| Arc::new(v.to_vec())), version_lsn, seen_at: at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_inside_the_known_interval() {
        let c = ReadCache::new(1 << 20);
        c.insert(b"k", Some(b"v1"), 5, 10);
        assert_eq!(c.get(b"k", 4), None, "before the version existed");
        assert_eq!(c.get(b"k", 5), Some((Some(b"v1".to_vec()), 5)));
        assert_eq!(c.get(b"k", 10), Some((Some(b"v1".to_vec()), 5)));
        assert_eq!(c.get(b"k", 11), None, "a newer version may exist after seen_at");
        c.insert(b"k", Some(b"v1"), 5, 20);
        assert_eq!(c.get(b"k", 15), Some((Some(b"v1".to_vec()), 5)));
    }

    #[test]
    fn a_guess_is_the_newest_known_version_and_says_whether_it_is_confirmed() {
        let c = ReadCache::new(1 << 20);
        c.insert(b"k", Some(b"v1"), 5, 10);
        assert_eq!(c.get_guess(b"k", 4), None, "before the version existed");
        assert_eq!(c.get_guess(b"k", 7), Some((Some(b"v1".to_vec()), 5, true)));
        assert_eq!(c.get_guess(b"k", 11), Some((Some(b"v1".to_vec()), 5, false)));
        assert_eq!(ReadCache::new(0).get_guess(b"k", 7), None);
    }

    #[test]
    fn newer_version_replaces_and_older_reads_do_not_clobber_it() {
        let c = ReadCache::new(1 << 20);
        c.insert(b"k", Some(b"v1"), 5, 10);
        c.insert(b"k", Some(b"v2"), 12, 12);
        assert_eq!(c.get(b"k", 12), Some((Some(b"v2".to_vec()), 12)));
        c.insert(b"k", Some(b"v1"), 5, 11);
        assert_eq!(c.get(b"k", 12), Some((Some(b"v2".to_vec()), 12)));
        assert_eq!(c.get(b"k", 11), None);
    }

    #[test]
    fn absent_keys_are_cached_too() {
        let c = ReadCache::new(1 << 20);
        c.insert(b"missing", None, 0, 7);
        assert_eq!(c.get(b"missing", 3), Some((None, 0)));
    }

    #[test]
    fn disabled_cache_answers_nothing() {
        let c = ReadCache::new(0);
        c.insert(b"k", Some(b"v"), 1, 2);
        assert_eq!(c.get(b"k", 1), None);
    }
}
