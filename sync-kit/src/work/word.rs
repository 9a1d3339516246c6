//! The bit layouts of the coordinator's atomic words.
//!
//! - The **control word**: `generation << 2 | status`. The full generation (62 bits, never wraps
//!   in practice: 2⁶² arms) and the [`Status`] of that job, so [`control::running`] compared
//!   with one load answers "is job `g` still running?".
//! - The **tagged counters** (the cursor: chunks left to hand out; the unfinished count: chunks
//!   not yet searched): `(generation mod 2²⁴) << 40 | count`. A compare-exchange on such a word
//!   succeeds only if it still carries the caller's job, so a worker of a superseded job can never
//!   take or count one of the new job's chunks (up to the tag wrapping: see [`TAG_BITS`]).
//!
//! | control status | meaning                                                   | changed by            |
//! |----------------|-----------------------------------------------------------|-----------------------|
//! | `Running`      | chunks may be handed out, the first success wins          | `arm`                 |
//! | `Won`          | a `report_success` was accepted                           | `report_success`      |
//! | `Cancelled`    | `cancel`, or a chunk abandoned while running               | `cancel`, `abandon_*` |
//! | `Exhausted`    | every chunk was searched without success (or empty range) | last `finish_chunk`   |
//!
//! Only `arm` leaves a terminal status (`Won`, `Cancelled`, `Exhausted`), by starting the next
//! generation.

/// Bits of a tagged counter that count chunks.
pub(super) const COUNT_BITS: u32 = 40;

/// Bits of a tagged counter that carry the generation (its low bits).
///
/// A compare-exchange by a worker of job `g` could wrongly succeed on a later job's word only if
/// that worker stalled between its load and its compare-exchange while exactly a multiple of
/// 2²⁴ (16.7 million) jobs were armed, and the later job's counter happened to equal the value
/// it loaded: the usual bound of a tagged word (ABA), documented in the module.
pub(super) const TAG_BITS: u32 = 64 - COUNT_BITS;

/// The most chunks one job can have: a larger range gets a larger chunk size.
pub(super) const MAX_CHUNKS: u64 = (1 << COUNT_BITS) - 1;

const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Where a job stands, in the low two bits of the control word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Running = 0,
    Won = 1,
    Cancelled = 2,
    Exhausted = 3,
}

pub(super) mod control {
    //! `generation << 2 | status`.

    use super::Status;

    /// The control word of job `generation` in `status`.
    #[inline]
    pub(in crate::work) const fn pack(generation: u64, status: Status) -> u64 {
        debug_assert!(generation < 1 << 62);
        generation << 2 | status as u64
    }

    /// The control word while job `generation` runs.
    #[inline]
    pub(in crate::work) const fn running(generation: u64) -> u64 {
        pack(generation, Status::Running)
    }

    /// `(generation, status)` of a control word.
    #[inline]
    pub(in crate::work) const fn unpack(word: u64) -> (u64, Status) {
        let status = match word & 0b11 {
            0 => Status::Running,
            1 => Status::Won,
            2 => Status::Cancelled,
            _ => Status::Exhausted,
        };
        (word >> 2, status)
    }
}

pub(super) mod tagged {
    //! `(generation mod 2²⁴) << 40 | count`.

    use super::{COUNT_BITS, MAX_CHUNKS, TAG_MASK};

    /// The tagged word of job `generation` holding `count`.
    #[inline]
    pub(in crate::work) const fn pack(generation: u64, count: u64) -> u64 {
        debug_assert!(count <= MAX_CHUNKS);
        (generation & TAG_MASK) << COUNT_BITS | count
    }

    /// The count in `word` if it carries job `generation` and is not zero (a zero count is the
    /// closed or finished state: there is nothing to take).
    #[inline]
    pub(in crate::work) const fn count_for(word: u64, generation: u64) -> Option<u64> {
        let count = word & MAX_CHUNKS;
        if word >> COUNT_BITS == generation & TAG_MASK && count > 0 {
            Some(count)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trips_every_status() {
        for status in [
            Status::Running,
            Status::Won,
            Status::Cancelled,
            Status::Exhausted,
        ] {
            for generation in [0, 1, 7, (1 << 62) - 1] {
                assert_eq!(
                    control::unpack(control::pack(generation, status)),
                    (generation, status)
                );
            }
        }
        assert_ne!(control::running(1), control::running(2));
        assert_ne!(control::running(1), control::pack(1, Status::Won));
    }

    #[test]
    fn tagged_count_belongs_to_its_generation_only() {
        let word = tagged::pack(5, 3);
        assert_eq!(tagged::count_for(word, 5), Some(3));
        assert_eq!(tagged::count_for(word, 6), None);
        assert_eq!(tagged::count_for(word - 1, 5), Some(2));
        assert_eq!(tagged::count_for(tagged::pack(5, 0), 5), None);
        assert_eq!(
            tagged::count_for(tagged::pack(5, MAX_CHUNKS), 5),
            Some(MAX_CHUNKS)
        );
        // The tag is the generation's low 24 bits: it wraps (the documented ABA bound).
        assert_eq!(tagged::count_for(word, 5 + (1 << TAG_BITS)), Some(3));
    }
}
