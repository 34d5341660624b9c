//! Where a reply's records lie. Offsets count records within one log, and with several
//! partitions each has its own log: offset 7 of partition 0 and offset 7 of partition 1
//! are different records, so an offset never travels without its partition.

use crate::storage::Offset;

/// A record's place: its partition's log and its offset there, and the log's count of
/// truncations read before the record was appended or read (`Log::truncations`): an
/// offset names the same record only while that count stands, since a log that drops a
/// divergent tail takes other records at the same offsets. Deliberately not ordered:
/// marks of different partitions do not compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) partition: u32,
    pub(crate) offset: Offset,
    pub(crate) truncations: u64,
}

impl Mark {
    pub(crate) fn new(partition: u32, truncations: u64, offset: Offset) -> Mark {
        Mark { partition, offset, truncations }
    }
}

/// The highest mark per partition of what a command or batch wrote (or shows): what its
/// replies wait for. One partition is held inline, so a single-partition server (and any
/// batch within one partition) never allocates for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    first: Option<Mark>,
    /// Further partitions, each once, none of them `first`'s.
    more: Vec<Mark>,
}

impl Marks {
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Raises the mark of `mark`'s partition to `mark`, if it is higher; the truncation
    /// count kept is the earlier one, so that a cut after either record was touched shows.
    pub(crate) fn add(&mut self, mark: Mark) {
        let held = std::iter::once(&mut self.first).flatten().chain(self.more.iter_mut());
        for held in held {
            if held.partition == mark.partition {
                held.offset = held.offset.max(mark.offset);
                held.truncations = held.truncations.min(mark.truncations);
                return;
            }
        }
        match self.first {
            None => self.first = Some(mark),
            Some(_) => self.more.push(mark),
        }
    }

    /// Adds every mark of `other`.
    pub(crate) fn merge(&mut self, other: &Marks) {
        for mark in other.iter() {
            self.add(mark);
        }
    }

    /// The highest mark per partition, one each.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Mark> + '_ {
        self.first.iter().chain(self.more.iter()).copied()
    }

    /// The mark, if every mark names one partition (`None` when empty or several).
    pub(crate) fn single(&self) -> Option<Mark> {
        self.first.filter(|_| self.more.is_empty())
    }

    /// Hands the marks over, leaving none.
    pub(crate) fn take(&mut self) -> Marks {
        std::mem::take(self)
    }
}

impl From<Option<Mark>> for Marks {
    fn from(mark: Option<Mark>) -> Marks {
        Marks { first: mark, more: Vec::new() }
    }
}

impl From<Mark> for Marks {
    fn from(mark: Mark) -> Marks {
        Some(mark).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_the_highest_offset_of_each_partition_apart() {
        let mut marks = Marks::default();
        assert!(marks.is_empty() && marks.single().is_none());
        marks.add(Mark::new(0, 0, 5));
        marks.add(Mark::new(0, 0, 3));
        assert_eq!(marks.single(), Some(Mark::new(0, 0, 5)));
        marks.add(Mark::new(1, 0, 2));
        marks.add(Mark::new(1, 0, 9));
        assert_eq!(marks.single(), None, "two partitions");
        assert_eq!(marks.iter().collect::<Vec<_>>(), [Mark::new(0, 0, 5), Mark::new(1, 0, 9)]);
        let mut other = Marks::from(Mark::new(1, 0, 4));
        other.merge(&marks);
        assert_eq!(other.iter().collect::<Vec<_>>(), [Mark::new(1, 0, 9), Mark::new(0, 0, 5)]);
        assert!(other.take().iter().count() == 2 && other.is_empty());
    }

    #[test]
    fn a_partition_keeps_the_earliest_truncation_count_of_its_marks() {
        let mut marks = Marks::from(Mark::new(0, 3, 5));
        marks.add(Mark::new(0, 2, 4));
        marks.add(Mark::new(0, 4, 6));
        assert_eq!(marks.single(), Some(Mark::new(0, 2, 6)), "a cut after the earliest touch shows");
    }
}
