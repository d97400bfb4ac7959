//! Reconfirmation planning, free of I/O: given a majority of promises, which node's log becomes
//! the new epoch's, what is already known committed, and where the epoch-start record goes.
//! The sequencer executes the plan; the simulation test runs it against in-memory acceptors
//! with crashes at every step.

use triad_protocol::{EntryId, Lsn};

/// A node's promise, as the sealing sequencer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promise {
    pub node: usize,
    /// The node's last entry, with the epoch that *wrote* it (never relabelled).
    pub last: EntryId,
    /// A lower bound of the commit watermark the node knew.
    pub commit_lsn: Lsn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The promise whose log the new epoch adopts: the highest `(last epoch, last lsn)`. Any
    /// committed entry is on a majority, every majority meets this one, and the log-matching
    /// rule makes the highest tail contain every entry the others hold that was committed.
    pub source: usize,
    /// Entries up to here are committed (some node was told so) and identical wherever held.
    pub committed: Lsn,
    /// LSN of the new epoch-start record, right after the adopted log.
    pub epoch_start: Lsn,
}

impl Plan {
    /// Entries the other nodes may miss: copied from the source, each keeping its epoch.
    pub fn suffix(&self) -> std::ops::RangeInclusive<Lsn> {
        self.committed + 1..=self.epoch_start - 1
    }
}

/// `None` for an empty set of promises.
pub fn plan(promises: &[Promise]) -> Option<Plan> {
    let source = promises.iter().max_by_key(|p| (p.last, std::cmp::Reverse(p.node)))?;
    let committed = promises.iter().map(|p| p.commit_lsn).max().unwrap_or(0).min(source.last.lsn);
    Some(Plan { source: source.node, committed, epoch_start: source.last.lsn + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_protocol::Epoch;

    fn p(node: usize, epoch: u64, lsn: Lsn, commit: Lsn) -> Promise {
        Promise { node, last: EntryId::new(Epoch::new(epoch, 1), lsn), commit_lsn: commit }
    }

    #[test]
    fn the_highest_epoch_wins_over_the_longest_log() {
        // Node 1 holds a longer log from a deposed epoch 1; node 2's shorter log has epoch 2's
        // entries, which the longer one's tail cannot have been committed against.
        let plan = plan(&[p(1, 1, 9, 3), p(2, 2, 6, 4)]).unwrap();
        assert_eq!(plan, Plan { source: 2, committed: 4, epoch_start: 7 });
        assert_eq!(plan.suffix(), 5..=6);
    }

    #[test]
    fn same_epoch_longest_log_wins() {
        let plan = plan(&[p(0, 3, 5, 5), p(1, 3, 8, 2)]).unwrap();
        assert_eq!(plan.source, 1);
        assert_eq!(plan.committed, 5);
        assert_eq!(plan.epoch_start, 9);
    }

    #[test]
    fn committed_never_exceeds_the_adopted_log() {
        let plan = plan(&[p(0, 3, 5, 9)]).unwrap();
        assert_eq!(plan.committed, 5);
        assert_eq!(plan.suffix().count(), 0);
    }

    #[test]
    fn no_promises_no_plan() {
        assert_eq!(plan(&[]), None);
    }
}
