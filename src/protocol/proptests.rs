//! Property tests: the parser and framer never panic, and SET keeps message bytes exactly.

use bytes::BytesMut;
use proptest::prelude::*;

use super::{Command, Frame, LineFramer, MAX_ID_BYTES, max_line_bytes};

/// A valid ID: printable ASCII without spaces, plus bytes outside ASCII.
fn id() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff], 1..=MAX_ID_BYTES)
}

/// Any message a text line can carry: every byte but CR and LF.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>().prop_filter("no line break", |b| *b != b'\r' && *b != b'\n'), 0..512)
}

proptest! {
    #[test]
    fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Command::parse_line(&line, 1024);
    }

    #[test]
    fn set_round_trips_message_bytes(id in id(), message in message(), verb in "[sS][eE][tT]") {
        let line = [verb.as_bytes(), b" ", &id, b" ", &message].concat();
        prop_assert_eq!(
            Command::parse_line(&line, 1024),
            Ok(Command::Set { id: &id, message: &message })
        );
    }

    #[test]
    fn framing_is_independent_of_how_bytes_are_split(
        lines in prop::collection::vec(message(), 0..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let stream: Vec<u8> = lines.iter().flat_map(|l| [&l[..], b"\r\n"].concat()).collect();
        let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cut_at.push(stream.len());
        cut_at.sort_unstable();

        let limit = 300;
        let mut framer = LineFramer::new(limit);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut start = 0;
        for end in cut_at {
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            got.extend(std::iter::from_fn(|| framer.next_frame(&mut buf)));
        }
        let expected: Vec<Frame> = lines
            .iter()
            .map(|l| if l.len() > limit { Frame::TooLong } else { Frame::Line(l.clone().into()) })
            .collect();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn line_limit_leaves_room_for_the_longest_set() {
    let longest = 4 + MAX_ID_BYTES + 1 + 1000;
    assert!(max_line_bytes(1000) >= longest);
}
