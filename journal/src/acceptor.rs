//! The acceptor's rules, free of I/O: what a journal node does with a seal, an append or a
//! recovery read, given its promise and a read-only view of its log. The server executes the
//! decisions (persist, truncate, write, fsync); this module only decides, so every case of
//! promise ordering, log matching and truncation is tested directly.

use triad_protocol::{EntryId, Epoch, Lsn};

/// What the rules need to see of the log.
pub trait LogView {
    /// Last entry held (EntryId::ZERO when empty).
    fn last(&self) -> EntryId;
    /// Lowest LSN still held; entries below were trimmed (and were committed).
    fn first_lsn(&self) -> Lsn;
    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch>;
    fn first_lsn_of_epoch(&self, epoch: Epoch) -> Option<Lsn>;
}

/// The acceptor's persistent state besides the log itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptorState {
    /// No epoch below this is served. Persisted before any answer depends on it.
    pub promised: Epoch,
    /// How far the log is known to be committed (a lower bound; may lag after a restart).
    pub commit_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealDecision {
    /// Persist `promised = epoch`, then answer with the log tail and commit watermark.
    Promise { epoch: Epoch },
    /// Refuse: the node has promised `promised` ≥ the requested epoch.
    Refuse { promised: Epoch },
}

/// Paxos prepare. Only an epoch strictly above the current promise is promised, so two
/// sequencers can never both collect a majority for the same epoch.
pub fn on_seal(state: &AcceptorState, epoch: Epoch) -> SealDecision {
    if epoch > state.promised {
        SealDecision::Promise { epoch }
    } else {
        SealDecision::Refuse { promised: state.promised }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendDecision {
    /// The append's epoch is below the promise; the sender is deposed.
    Stale { promised: Epoch },
    /// `prev` is not in this log. Retry with `prev` at LSN `retry_from` (the log is known not to
    /// diverge from the sender's below the epoch the hint skips).
    Mismatch { retry_from: Lsn },
    /// The append fits. Execute in order: persist `promise` if set; truncate everything above
    /// `truncate_after` if set; append `entries[skip..]`; raise the commit watermark to
    /// `commit_lsn`. `matched` is the last entry now known to equal the sender's log.
    Accept {
        promise: Option<Epoch>,
        truncate_after: Option<Lsn>,
        skip: usize,
        commit_lsn: Lsn,
        matched: EntryId,
    },
    /// Accepting would remove an entry at or below the commit watermark: two leaders disagree
    /// about committed history. Never happens unless safety is already broken; refuse loudly.
    CommittedConflict { lsn: Lsn },
    /// The first entry this log would take, at `lsn`, has an epoch below `follows`, the epoch
    /// of the entry it would follow here. A log's epochs never go down; only a sender whose
    /// log contradicts what this node holds below its trim point (committed entries) sends it.
    EpochsOutOfOrder { lsn: Lsn, epoch: Epoch, follows: Epoch },
}

/// Raft's log-matching rule with PALF's epochs. `entries` are the ids of the appended entries,
/// which must be dense after `prev` (the server checks that before calling).
pub fn on_append(
    state: &AcceptorState,
    log: &impl LogView,
    epoch: Epoch,
    prev: EntryId,
    entries: &[EntryId],
    commit_lsn: Lsn,
) -> AppendDecision {
    if epoch < state.promised {
        return AppendDecision::Stale { promised: state.promised };
    }
    // An append of a higher epoch implies that epoch's sequencer holds a majority of promises;
    // adopting it here (and persisting it) fences older sequencers from this node too.
    let promise = (epoch > state.promised).then_some(epoch);

    let last = log.last();
    if !prev_matches(log, prev) {
        let retry_from = if prev.lsn > last.lsn {
            last.lsn
        } else {
            // Our entry at prev.lsn belongs to a different epoch: skip back over that whole epoch.
            let ours = log.epoch_at(prev.lsn).unwrap_or(Epoch::ZERO);
            log.first_lsn_of_epoch(ours).map_or(0, |first| first.saturating_sub(1))
        };
        return AppendDecision::Mismatch { retry_from };
    }

    // Skip what we already hold; truncate at the first entry whose epoch differs.
    let mut skip = 0;
    let mut truncate_after = None;
    for id in entries {
        if id.lsn < log.first_lsn() {
            skip += 1;
            continue;
        }
        match log.epoch_at(id.lsn) {
            Some(e) if e == id.epoch => skip += 1,
            Some(_) => {
                let cut = id.lsn - 1;
                if id.lsn <= state.commit_lsn {
                    return AppendDecision::CommittedConflict { lsn: id.lsn };
                }
                truncate_after = Some(cut);
                break;
            }
            None => break,
        }
    }
    if let Some(first_new) = entries.get(skip) {
        // Entries below the trim point are skipped unchecked (they were committed, so an honest
        // sender's are ours), which is why the first one taken is checked against what it
        // follows, instead of leaving the store to refuse it after the decision was made.
        let follows = match truncate_after {
            Some(cut) => log.epoch_at(cut),
            None => Some(last.epoch),
        };
        if let Some(follows) = follows.filter(|&f| first_new.epoch < f) {
            return AppendDecision::EpochsOutOfOrder { lsn: first_new.lsn, epoch: first_new.epoch, follows };
        }
    }
    let matched = entries.last().copied().unwrap_or(prev);
    // Only what this append proved to match may be declared committed here: an entry of ours
    // beyond `matched` might be a deposed epoch's leftover.
    let commit_lsn = state.commit_lsn.max(commit_lsn.min(matched.lsn));
    AppendDecision::Accept { promise, truncate_after, skip, commit_lsn, matched }
}

fn prev_matches(log: &impl LogView, prev: EntryId) -> bool {
    if prev.lsn == 0 || prev.lsn < log.first_lsn() {
        // The empty prefix matches everything; trimmed entries were committed, hence identical.
        return true;
    }
    log.epoch_at(prev.lsn) == Some(prev.epoch)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebaseDecision {
    /// The request's epoch is below the promise; the sender is deposed.
    Stale { promised: Epoch },
    /// The sender does not know `base` to be committed; only a committed entry can be a base.
    Uncommitted,
    /// The log already continues from `base` (it holds `base`, or has trimmed past it): an
    /// append after `base` matches as it is. Nothing to do.
    Continues,
    /// Drop every entry and continue the log right after `base`. Execute in order: replace the
    /// log, persist `promise` (if set) with the commit watermark `commit_lsn`.
    Restart { promise: Option<Epoch>, commit_lsn: Lsn },
    /// Our entry at `base.lsn` has another epoch and is at or below our commit watermark: two
    /// leaders disagree about committed history. Refuse loudly.
    CommittedConflict { lsn: Lsn },
}

/// A node that lacks entries every peer has trimmed can never catch up by appends. Trimmed
/// entries are committed and every learner has them, so the node may drop its log and continue
/// it after the peers' trim point (Raft's snapshot install, with nothing to install: the log
/// *is* the state, and storage already holds what was trimmed).
///
/// What it drops is never needed for a quorum: every entry it holds is either at or below
/// `base` (committed, and trimmed by the peers), or above `base` in a log whose entry at
/// `base.lsn` differs from the committed one — by log matching, a divergent suffix that was
/// never committed.
pub fn on_rebase(
    state: &AcceptorState,
    log: &impl LogView,
    epoch: Epoch,
    base: EntryId,
    commit_lsn: Lsn,
) -> RebaseDecision {
    if epoch < state.promised {
        return RebaseDecision::Stale { promised: state.promised };
    }
    if base.lsn > commit_lsn {
        return RebaseDecision::Uncommitted;
    }
    if base.lsn < log.first_lsn() {
        return RebaseDecision::Continues;
    }
    match log.epoch_at(base.lsn) {
        Some(ours) if ours == base.epoch => return RebaseDecision::Continues,
        Some(_) if base.lsn <= state.commit_lsn => {
            return RebaseDecision::CommittedConflict { lsn: base.lsn }
        }
        _ => {}
    }
    let promise = (epoch > state.promised).then_some(epoch);
    RebaseDecision::Restart { promise, commit_lsn: state.commit_lsn.max(base.lsn) }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchDecision {
    /// Serve entries up to `upto` (inclusive).
    Serve { upto: Lsn },
    /// A recovery read of an epoch below the promise: the reader is deposed.
    Stale { promised: Epoch },
}

/// Learners read committed entries only. A recovering sequencer reads the uncommitted tail too,
/// but only while its epoch is still the promised one: every recovery read fences (BookKeeper
/// once let a deposed writer commit because only some of its reads did).
pub fn on_fetch(state: &AcceptorState, log: &impl LogView, epoch: Option<Epoch>) -> FetchDecision {
    match epoch {
        None => FetchDecision::Serve { upto: state.commit_lsn.min(log.last().lsn) },
        Some(e) if e < state.promised => FetchDecision::Stale { promised: state.promised },
        Some(_) => FetchDecision::Serve { upto: log.last().lsn },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as a list of epochs, lsn = index + first.
    struct Log {
        first: Lsn,
        epochs: Vec<Epoch>,
        /// The epoch of the trimmed entry at `first - 1` (a rebased log's base).
        base: Epoch,
    }

    fn e(n: u64) -> Epoch {
        Epoch::new(n, 1)
    }

    fn log(epochs: &[u64]) -> Log {
        Log { first: 1, epochs: epochs.iter().map(|&n| e(n)).collect(), base: Epoch::ZERO }
    }

    impl LogView for Log {
        fn last(&self) -> EntryId {
            match self.epochs.last() {
                Some(&ep) => EntryId::new(ep, self.first + self.epochs.len() as u64 - 1),
                None => EntryId::new(self.base, self.first - 1),
            }
        }
        fn first_lsn(&self) -> Lsn {
            self.first
        }
        fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
            lsn.checked_sub(self.first).and_then(|i| self.epochs.get(i as usize).copied())
        }
        fn first_lsn_of_epoch(&self, epoch: Epoch) -> Option<Lsn> {
            self.epochs.iter().position(|&x| x == epoch).map(|i| self.first + i as u64)
        }
    }

    fn ids(epoch: u64, lsns: std::ops::RangeInclusive<u64>) -> Vec<EntryId> {
        lsns.map(|l| EntryId::new(e(epoch), l)).collect()
    }

    fn state(promised: u64, commit: Lsn) -> AcceptorState {
        AcceptorState { promised: if promised == 0 { Epoch::ZERO } else { e(promised) }, commit_lsn: commit }
    }

    #[test]
    fn seal_promises_only_strictly_higher_epochs() {
        let s = state(3, 0);
        assert_eq!(on_seal(&s, e(4)), SealDecision::Promise { epoch: e(4) });
        assert_eq!(on_seal(&s, e(3)), SealDecision::Refuse { promised: e(3) });
        assert_eq!(on_seal(&s, e(2)), SealDecision::Refuse { promised: e(3) });
        // Same counter, higher sequencer id is a higher epoch: the pair is compared.
        assert_eq!(on_seal(&s, Epoch::new(3, 2)), SealDecision::Promise { epoch: Epoch::new(3, 2) });
    }

    #[test]
    fn append_of_older_epoch_is_stale() {
        let d = on_append(&state(5, 0), &log(&[]), e(4), EntryId::ZERO, &ids(4, 1..=1), 0);
        assert_eq!(d, AppendDecision::Stale { promised: e(5) });
    }

    #[test]
    fn append_to_empty_log_accepts_and_adopts_higher_epoch() {
        let d = on_append(&state(1, 0), &log(&[]), e(2), EntryId::ZERO, &ids(2, 1..=3), 2);
        assert_eq!(
            d,
            AppendDecision::Accept {
                promise: Some(e(2)),
                truncate_after: None,
                skip: 0,
                commit_lsn: 2,
                matched: EntryId::new(e(2), 3)
            }
        );
    }

    #[test]
    fn gap_after_tail_is_a_mismatch_pointing_at_the_tail() {
        let d = on_append(&state(1, 0), &log(&[1, 1]), e(1), EntryId::new(e(1), 5), &ids(1, 6..=6), 0);
        assert_eq!(d, AppendDecision::Mismatch { retry_from: 2 });
    }

    #[test]
    fn prev_with_different_epoch_skips_back_over_that_epoch() {
        // Our log: 1,1,2,2,2 ; the leader says lsn 5 is epoch 3.
        let l = log(&[1, 1, 2, 2, 2]);
        let d = on_append(&state(3, 0), &l, e(3), EntryId::new(e(3), 5), &[], 0);
        assert_eq!(d, AppendDecision::Mismatch { retry_from: 2 });
    }

    #[test]
    fn divergent_suffix_is_truncated_at_first_conflict() {
        // Ours: 1,1,2,2 (lsn 3,4 from a deposed epoch 2). Leader (epoch 3) sends lsn 3..=4 of epoch 1
        // recovered from another node, each keeping its original epoch.
        let l = log(&[1, 1, 2, 2]);
        let entries = vec![EntryId::new(e(1), 3), EntryId::new(e(3), 4)];
        let d = on_append(&state(3, 2), &l, e(3), EntryId::new(e(1), 2), &entries, 2);
        assert_eq!(
            d,
            AppendDecision::Accept {
                promise: None,
                truncate_after: Some(2),
                skip: 0,
                commit_lsn: 2,
                matched: EntryId::new(e(3), 4)
            }
        );
    }

    #[test]
    fn entries_already_held_are_skipped_not_truncated() {
        let l = log(&[1, 1, 1]);
        let d = on_append(&state(1, 0), &l, e(1), EntryId::new(e(1), 1), &ids(1, 2..=4), 4);
        assert_eq!(
            d,
            AppendDecision::Accept {
                promise: None,
                truncate_after: None,
                skip: 2,
                commit_lsn: 4,
                matched: EntryId::new(e(1), 4)
            }
        );
    }

    #[test]
    fn a_resent_older_append_does_not_truncate_newer_entries() {
        // Appends 1..=2 and 3..=4 were both applied; a duplicate of the first arrives again.
        let l = log(&[1, 1, 1, 1]);
        let d = on_append(&state(1, 0), &l, e(1), EntryId::ZERO, &ids(1, 1..=2), 0);
        assert!(matches!(d, AppendDecision::Accept { truncate_after: None, skip: 2, .. }));
    }

    #[test]
    fn commit_watermark_is_capped_by_what_this_append_proved() {
        // We hold 1..=5 but the leader only proved a match up to 3: entries 4,5 may be a
        // deposed epoch's leftovers and must not be called committed.
        let l = log(&[1, 1, 1, 2, 2]);
        let d = on_append(&state(3, 0), &l, e(3), EntryId::new(e(1), 3), &[], 10);
        assert!(matches!(d, AppendDecision::Accept { commit_lsn: 3, .. }));
        // And it never goes down.
        let d = on_append(&state(3, 3), &l, e(3), EntryId::new(e(1), 1), &[], 1);
        assert!(matches!(d, AppendDecision::Accept { commit_lsn: 3, .. }));
    }

    #[test]
    fn truncating_committed_entries_is_refused() {
        let l = log(&[1, 1, 2]);
        let d = on_append(&state(3, 3), &l, e(3), EntryId::new(e(1), 2), &ids(3, 3..=3), 3);
        assert_eq!(d, AppendDecision::CommittedConflict { lsn: 3 });
    }

    #[test]
    fn prev_below_trim_point_matches() {
        let l = Log { first: 10, epochs: vec![e(1); 3], base: e(1) }; // lsn 10..=12
        let d = on_append(&state(1, 12), &l, e(1), EntryId::new(e(1), 5), &ids(1, 6..=13), 12);
        assert!(matches!(d, AppendDecision::Accept { skip: 7, truncate_after: None, .. }));
    }

    #[test]
    fn entries_whose_epochs_would_go_down_are_refused_not_taken() {
        // A log rebased after lsn 1000 of epoch 5: it holds nothing, and trimmed everything
        // up to 1000 as committed. An append whose entries pass below the trim point unchecked
        // must not hand the store an entry of a lower epoch after it.
        let l = Log { first: 1001, epochs: vec![], base: e(5) };
        let d = on_append(&state(6, 1000), &l, e(6), EntryId::new(e(1), 999), &ids(1, 1000..=1001), 1000);
        assert_eq!(d, AppendDecision::EpochsOutOfOrder { lsn: 1001, epoch: e(1), follows: e(5) });
        // The same append with the epoch the log continues from is taken.
        let d = on_append(&state(6, 1000), &l, e(6), EntryId::new(e(1), 999), &ids(5, 1000..=1001), 1000);
        assert!(matches!(d, AppendDecision::Accept { skip: 1, truncate_after: None, .. }), "{d:?}");

        // After a truncation, the first new entry follows the entry kept at the cut.
        let l = log(&[1, 3, 3]);
        let d = on_append(&state(4, 1), &l, e(4), EntryId::new(e(1), 1), &[EntryId::new(e(2), 2)], 1);
        assert_eq!(
            d,
            AppendDecision::Accept {
                promise: None,
                truncate_after: Some(1),
                skip: 0,
                commit_lsn: 1,
                matched: EntryId::new(e(2), 2)
            }
        );
        let l = log(&[2, 3, 3]);
        let d = on_append(&state(4, 1), &l, e(4), EntryId::new(e(2), 1), &[EntryId::new(e(1), 2)], 1);
        assert_eq!(d, AppendDecision::EpochsOutOfOrder { lsn: 2, epoch: e(1), follows: e(2) });
    }

    #[test]
    fn heartbeat_with_matching_prev_raises_commit() {
        let l = log(&[1, 1]);
        let d = on_append(&state(1, 0), &l, e(1), EntryId::new(e(1), 2), &[], 2);
        assert!(matches!(d, AppendDecision::Accept { commit_lsn: 2, skip: 0, .. }));
    }

    #[test]
    fn fetch_serves_committed_to_learners_and_fences_recovery_reads() {
        let l = log(&[1, 1, 1, 1]);
        let s = state(2, 2);
        assert_eq!(on_fetch(&s, &l, None), FetchDecision::Serve { upto: 2 });
        assert_eq!(on_fetch(&s, &l, Some(e(2))), FetchDecision::Serve { upto: 4 });
        assert_eq!(on_fetch(&s, &l, Some(e(1))), FetchDecision::Stale { promised: e(2) });
    }

    #[test]
    fn rebase_is_fenced_and_needs_a_committed_base() {
        let l = log(&[1, 1]);
        let base = EntryId::new(e(2), 100);
        assert_eq!(on_rebase(&state(3, 2), &l, e(2), base, 200), RebaseDecision::Stale { promised: e(3) });
        assert_eq!(on_rebase(&state(2, 2), &l, e(2), base, 99), RebaseDecision::Uncommitted);
    }

    #[test]
    fn a_node_behind_the_base_restarts_after_it() {
        // Holds 1..=2, committed; the peers hold the log from 101 on.
        let base = EntryId::new(e(2), 100);
        let d = on_rebase(&state(2, 2), &log(&[1, 1]), e(3), base, 150);
        assert_eq!(d, RebaseDecision::Restart { promise: Some(e(3)), commit_lsn: 100 });
        // An empty log too; the watermark never goes down.
        let d = on_rebase(&state(3, 0), &log(&[]), e(3), base, 150);
        assert_eq!(d, RebaseDecision::Restart { promise: None, commit_lsn: 100 });
    }

    #[test]
    fn a_node_that_holds_the_base_or_trimmed_past_it_continues() {
        let l = log(&[1, 1, 2, 2]);
        assert_eq!(on_rebase(&state(2, 0), &l, e(2), EntryId::new(e(2), 3), 4), RebaseDecision::Continues);
        let trimmed = Log { first: 10, epochs: vec![e(2); 3], base: e(2) };
        assert_eq!(
            on_rebase(&state(2, 0), &trimmed, e(2), EntryId::new(e(1), 8), 12),
            RebaseDecision::Continues
        );
    }

    #[test]
    fn a_divergent_entry_at_the_base_is_dropped_unless_committed_here() {
        // Ours at lsn 3 is epoch 2 (a deposed epoch's leftover); the committed one is epoch 3.
        let l = log(&[1, 1, 2, 2, 2]);
        let base = EntryId::new(e(3), 3);
        let d = on_rebase(&state(4, 2), &l, e(4), base, 3);
        assert_eq!(d, RebaseDecision::Restart { promise: None, commit_lsn: 3 });
        // Had this node known lsn 3 committed, safety would already be broken.
        assert_eq!(on_rebase(&state(4, 3), &l, e(4), base, 3), RebaseDecision::CommittedConflict { lsn: 3 });
    }

    /// The "new sequencer dies half-way through reconfirmation" case from DESIGN.md: entries
    /// copied during recovery keep their original epoch, so a later sequencer that finds only the
    /// half-copied suffix still sees them as the same entries and never mistakes them for newer.
    #[test]
    fn half_done_reconfirmation_keeps_original_epochs() {
        // Node A holds 1..=4 of epoch 1 (3,4 unacknowledged). Sequencer of epoch 2 copies lsn 3 to
        // node B (keeping epoch 1) and dies before its epoch-start record.
        let b = log(&[1, 1]);
        let d = on_append(&state(2, 2), &b, e(2), EntryId::new(e(1), 2), &ids(1, 3..=3), 2);
        assert!(matches!(d, AppendDecision::Accept { truncate_after: None, skip: 0, .. }));
        let b = log(&[1, 1, 1]);
        // Sequencer of epoch 3 recovers from A (1..=4 epoch 1): B's lsn 3 matches (same epoch),
        // so only lsn 4 is new; nothing is truncated and nothing was relabelled.
        let d = on_append(&state(3, 2), &b, e(3), EntryId::new(e(1), 3), &ids(1, 4..=4), 2);
        assert!(matches!(d, AppendDecision::Accept { truncate_after: None, skip: 0, .. }));
    }
}
