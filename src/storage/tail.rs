//! Telling a torn tail from damage in the middle of the last segment.
//!
//! With a watermark (the durable length in the segment header) the answer is one
//! comparison: damage at or after it is a torn tail, below it corruption. Segments from
//! before the watermark existed (it reads 0) keep the older rule: the tail is torn if no
//! record with a valid CRC starts anywhere after the damage. That search CRCs a candidate
//! record at every byte position, and crafted bytes can make each candidate long (a
//! length field of 1 MiB repeated makes 4 MiB of tail cost 4 TiB of CRC), so its work is
//! bounded linearly in the tail's size; past the bound `open` refuses and asks for repair.

use super::Offset;
use super::record::{BODY_HEADER, Decoded, FRAME_HEADER, decode};

/// CRC work allowed per byte of tail searched, plus a fixed allowance.
const WORK_PER_TAIL_BYTE: u64 = 8;
const WORK_ALLOWANCE: u64 = 1 << 20;

/// Whether the damage at `position` of the last segment is a torn tail (`Err` when that
/// cannot be told within the work bound). `mark` is the segment's durable length.
pub(super) fn is_torn(
    bytes: &[u8],
    position: usize,
    mark: u64,
    after: Option<Offset>,
    max: usize,
) -> Result<bool, String> {
    if mark > 0 {
        return Ok(position as u64 >= mark);
    }
    let mut work = 0;
    match valid_record_follows(bytes, position, after, max, &mut work) {
        Some(follows) => Ok(!follows),
        None => Err(format!(
            "no durable length recorded, and telling a torn tail from damage took more than {work} bytes of CRC work (`msglog check --repair` cuts here)"
        )),
    }
}

/// Whether a record with a valid CRC and a plausible offset starts anywhere after `from`;
/// `None` once more than the bound of CRC work was needed. `work` counts the bytes CRC'd.
pub(super) fn valid_record_follows(
    bytes: &[u8],
    from: usize,
    after: Option<Offset>,
    max: usize,
    work: &mut u64,
) -> Option<bool> {
    let budget = WORK_PER_TAIL_BYTE * (bytes.len().saturating_sub(from) as u64) + WORK_ALLOWANCE;
    for p in from + 1..bytes.len() {
        let rest = &bytes[p..];
        // The bytes `decode` would CRC here: only a plausible, complete candidate costs any.
        if rest.len() >= FRAME_HEADER {
            let body = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let total = FRAME_HEADER.saturating_add(body);
            if body > BODY_HEADER && total <= max && total <= rest.len() {
                *work += body as u64;
                if *work > budget {
                    return None;
                }
            }
        }
        if matches!(decode(rest, max), Decoded::Record(r, _) if after.is_none_or(|a| r.offset > a)) {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crafted_four_mib_tail_is_given_up_on_within_linear_work() {
        let tail: Vec<u8> = [0x00, 0x00, 0x10, 0x00].repeat(1 << 20);
        let mut work = 0;
        let found = valid_record_follows(&tail, 0, None, 16 << 20, &mut work);
        assert_eq!(found, None, "the search gives up");
        let bound = WORK_PER_TAIL_BYTE * tail.len() as u64 + WORK_ALLOWANCE;
        assert!(work <= bound + (1 << 20), "CRC'd {work} bytes for a {} byte tail", tail.len());
    }

    #[test]
    fn a_short_garbage_tail_is_searched_to_the_end_and_found_torn() {
        let mut work = 0;
        let garbage = vec![0xab; 64 << 10];
        assert_eq!(valid_record_follows(&garbage, 0, None, 16 << 20, &mut work), Some(false));
        assert_eq!(is_torn(&garbage, 0, 0, None, 16 << 20), Ok(true));
    }

    #[test]
    fn with_a_watermark_damage_below_it_is_corruption_and_at_or_after_it_a_torn_tail() {
        let bytes = vec![0u8; 100];
        assert_eq!(is_torn(&bytes, 40, 50, None, 1 << 20), Ok(false));
        assert_eq!(is_torn(&bytes, 50, 50, None, 1 << 20), Ok(true));
    }
}
