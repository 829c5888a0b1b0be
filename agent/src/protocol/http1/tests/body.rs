//! Body framing on its own: the chunked decoder and gaps.

use crate::protocol::http1::body::{BodyMode, Chunked, ChunkedError, Fed, SyncLoss};

fn chunked() -> BodyMode {
    BodyMode::Chunked(Chunked::default())
}

fn feed_all(mode: &mut BodyMode, pieces: &[&[u8]]) -> u64 {
    pieces.iter().map(|p| mode.feed(p).consumed).sum()
}

#[test]
fn chunked_stops_exactly_at_the_end() {
    let mut mode = chunked();
    let fed = mode.feed(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n");
    assert_eq!(
        fed,
        Fed {
            consumed: 13,
            lost: None
        }
    );
    assert!(mode.is_done());
}

#[test]
fn chunked_accepts_bare_lf_and_upper_case_hex() {
    let mut mode = chunked();
    assert_eq!(feed_all(&mut mode, &[b"A\nabcdefghij\n0\n\n"]), 16);
    assert!(mode.is_done());
}

#[test]
fn chunked_size_line_split_everywhere() {
    let body: &[u8] = b"1F4;ext=\"a b\"\r\n";
    for split in 0..body.len() {
        let mut mode = chunked();
        let (a, b) = body.split_at(split);
        assert_eq!(feed_all(&mut mode, &[a, b]), body.len() as u64);
        // 0x1F4 bytes of data are now expected: a gap of that size is fine.
        assert_eq!(mode.feed_gap(500).lost, None);
        assert_eq!(feed_all(&mut mode, &[b"\r\n0\r\n\r\n"]), 7);
        assert!(mode.is_done(), "split {split}");
    }
}

#[test]
fn chunked_rejects_bad_size_and_missing_crlf() {
    for (input, error) in [
        (&b"x\r\n"[..], ChunkedError::InvalidSize),
        (b"\r\n", ChunkedError::InvalidSize),
        (b"3\r\nabcX", ChunkedError::MissingCrlf),
        (b"3\r\nabc\rX", ChunkedError::MissingCrlf),
        (b"3 4\r\n", ChunkedError::InvalidSize),
        (b"11111111111111111\r\n", ChunkedError::SizeOverflow),
    ] {
        let mut mode = chunked();
        let fed = mode.feed(input);
        assert_eq!(fed.lost, Some(SyncLoss::Malformed(error)), "{input:?}");
        assert_eq!(fed.consumed, input.len() as u64);
        assert!(mode.is_open_ended());
    }
}

#[test]
fn chunked_extension_and_trailers_are_bounded() {
    let mut mode = chunked();
    let mut line = b"1;".to_vec();
    line.extend(std::iter::repeat_n(b'e', 5000));
    assert_eq!(
        mode.feed(&line).lost,
        Some(SyncLoss::Malformed(ChunkedError::ExtensionTooLong))
    );

    let mut mode = chunked();
    let mut trailer = b"0\r\nX: ".to_vec();
    trailer.extend(std::iter::repeat_n(b't', 20_000));
    assert_eq!(
        mode.feed(&trailer).lost,
        Some(SyncLoss::Malformed(ChunkedError::TrailerTooLong))
    );
}

#[test]
fn gap_inside_chunk_data_keeps_sync_but_not_past_it() {
    let mut mode = chunked();
    mode.feed(b"10\r\n");
    assert_eq!(
        mode.feed_gap(16),
        Fed {
            consumed: 16,
            lost: None
        }
    );
    assert_eq!(feed_all(&mut mode, &[b"\r\n"]), 2);
    // Now at a size line: any gap hides framing.
    assert_eq!(mode.feed_gap(1).lost, Some(SyncLoss::Gap));
    assert!(mode.is_open_ended());

    // Three bytes past the data cannot be only the CRLF.
    let mut mode = chunked();
    mode.feed(b"10\r\n");
    assert_eq!(mode.feed_gap(19).lost, Some(SyncLoss::Gap));
}

#[test]
fn length_takes_no_more_than_remaining() {
    let mut mode = BodyMode::Length(10);
    assert_eq!(mode.feed(b"12345").consumed, 5);
    assert_eq!(mode.feed_gap(100).consumed, 5);
    assert!(mode.is_done());
    assert_eq!(mode.feed(b"more").consumed, 0);
}

#[test]
fn open_ended_modes_take_everything() {
    for mut mode in [BodyMode::UntilClose, BodyMode::LostSync] {
        assert_eq!(mode.feed(b"abc").consumed, 3);
        assert_eq!(mode.feed_gap(1 << 40).consumed, 1 << 40);
        assert!(!mode.is_done());
    }
}

#[test]
fn gap_one_or_two_past_data_is_taken_as_the_crlf() {
    let mut mode = chunked();
    mode.feed(b"4\r\nab");
    assert_eq!(mode.feed_gap(4).lost, None);
    assert_eq!(feed_all(&mut mode, &[b"0\r\n\r\n"]), 5);
    assert!(mode.is_done());

    let mut mode = chunked();
    mode.feed(b"4\r\nab");
    assert_eq!(mode.feed_gap(3).lost, None);
    assert_eq!(feed_all(&mut mode, &[b"\n0\r\n\r\n"]), 6);
    assert!(mode.is_done());

    let mut mode = chunked();
    mode.feed(b"4\r\nabcd\r");
    assert_eq!(mode.feed_gap(1).lost, None);
    assert_eq!(feed_all(&mut mode, &[b"0\r\n\r\n"]), 5);
    assert!(mode.is_done());
}

#[test]
fn wrong_crlf_guess_is_a_gap_not_an_error() {
    let mut mode = chunked();
    mode.feed(b"4\r\nab");
    mode.feed_gap(4);
    let fed = mode.feed(b"zz");
    assert_eq!(fed.lost, Some(SyncLoss::Gap));
    // Once a size line parsed after the guess, later errors are real again.
    let mut mode = chunked();
    mode.feed(b"4\r\nab");
    mode.feed_gap(4);
    mode.feed(b"2\r\nxy");
    assert_eq!(
        mode.feed(b"!!").lost,
        Some(SyncLoss::Malformed(ChunkedError::MissingCrlf))
    );
}

#[test]
fn huge_gap_after_chunk_data_loses_sync_without_overflow() {
    // A corrupt record may count any u64 of unseen bytes; after the data's CR, the guess
    // for the LF once added one to it.
    let mut mode = chunked();
    mode.feed(b"4\r\nabcd\r");
    let fed = mode.feed_gap(u64::MAX);
    assert_eq!(fed.consumed, u64::MAX);
    assert_eq!(fed.lost, Some(SyncLoss::Gap));
    assert!(mode.is_open_ended());
}
