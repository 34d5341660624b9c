//! Property tests: the RESP parser never panics, and frames the same however bytes arrive.

use proptest::prelude::*;

use super::{RespLimits, RespParser};

fn encode(request: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = format!("*{}\r\n", request.len()).into_bytes();
    for arg in request {
        wire.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        wire.extend_from_slice(arg);
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

/// Frames `stream` delivered in pieces ending at `cuts`; stops at the first error.
fn frame(stream: &[u8], cuts: &[usize]) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut parser = RespParser::new(RespLimits::for_max_message(256));
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match parser.next_request(&buf) {
                Ok(Some(request)) => {
                    got.push(request.args.iter().map(<[u8]>::to_vec).collect());
                    let len = request.len;
                    buf.drain(..len);
                }
                Ok(None) => break,
                Err(_) => return (got, true),
            }
        }
    }
    (got, false)
}

fn request() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6)
}

proptest! {
    #[test]
    fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
        let _ = frame(&bytes, &[cut.index(bytes.len() + 1)]);
        let star: Vec<u8> = [&b"*"[..], &bytes].concat();
        let _ = frame(&star, &[]);
    }

    #[test]
    fn requests_round_trip_however_the_stream_is_cut(
        requests in prop::collection::vec(request(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let stream: Vec<u8> = requests.iter().flat_map(|r| encode(r)).collect();
        let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cut_at.sort_unstable();
        prop_assert_eq!(frame(&stream, &cut_at), (requests, false));
    }
}
