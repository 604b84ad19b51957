//! The DTL protocol fuzz body (cargo-fuzz target `dtl`): what a server reads from an
//! untrusted TCP peer, and what a client reads back.
//!
//! The input is a byte stream of frames. Because a hostile peer computes valid checksums,
//! the body fixes each frame's crc32c unless the first input byte asks for raw bytes, so the
//! fuzzer reaches the decoders behind the checksum. Frames are read as the server does
//! ([`read_frame`] with the HELLO limit first, then [`MAX_FRAME`]) and decoded both as a
//! request and as a reply. Invariants: nothing panics; an APPEND's entries pass
//! [`check_entries`] exactly when [`decode_entries`] decodes them, with the same headers,
//! and decoded entries encode back to the same bytes; a decoded request or reply
//! re-encodes to its frame where an encoder exists.

use super::protocol::*;

/// What one frame exercised (so tests can check inputs reach every path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuzzPath {
    /// The frame layer refused the stream.
    Frame,
    /// A frame that decodes as neither a request nor a reply.
    Malformed,
    /// A request of this type decoded.
    Request(u8),
    /// An APPEND whose entries all check.
    Entries,
    /// A reply decoded.
    Reply,
}

/// Fix the crc32c of every complete frame in `stream` (lengths are kept as they are).
fn fix_checksums(stream: &mut [u8]) {
    let mut at = 0;
    while stream.len() - at >= FRAME_HEADER {
        let len = u32::from_le_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        let body = at + FRAME_HEADER;
        if stream.len() - body < len {
            return;
        }
        let crc = crate::crc::crc32c(&stream[body..body + len]);
        stream[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = body + len;
    }
}

/// Run one input; panics on a violated invariant. Returns the paths taken, frame by frame.
pub fn fuzz_dtl(data: &[u8]) -> Vec<FuzzPath> {
    let Some((&ctrl, rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut stream = rest.to_vec();
    if ctrl & 1 == 0 {
        fix_checksums(&mut stream);
    }
    let mut paths = Vec::new();
    let mut r: &[u8] = &stream;
    let mut body = Vec::new();
    let mut max = MAX_HELLO_FRAME;
    loop {
        match read_frame(&mut r, max, &mut body) {
            Ok(true) => {}
            Ok(false) => return paths,
            Err(_) => {
                paths.push(FuzzPath::Frame);
                return paths;
            }
        }
        assert!(!body.is_empty() && body.len() <= max, "frame of {} bytes passed a limit of {max}", body.len());
        max = MAX_FRAME;
        paths.push(frame(&body));
    }
}

fn frame(body: &[u8]) -> FuzzPath {
    let reply = Reply::decode(body);
    if let Ok(r) = &reply {
        check_reply(r, body);
    }
    match Request::decode(body) {
        Ok(Request::Append { req, count, raw }) => {
            let checked = check_entries(raw, count);
            let decoded = decode_entries(raw, count);
            match (&checked, &decoded) {
                (Ok(heads), Ok(entries)) => {
                    assert_eq!(heads.len(), entries.len());
                    assert_eq!(heads.iter().map(|h| h.len).sum::<usize>(), raw.len());
                    for (h, (seq, e)) in heads.iter().zip(entries) {
                        assert_eq!((h.seq, h.sco), (*seq, e.sco));
                        assert_eq!(h.len, e.encoded_len());
                    }
                    let again = append_frame(req, entries.iter().map(|(s, e)| (*s, e)));
                    assert_eq!(&again[FRAME_HEADER..], body, "APPEND does not re-encode to its frame");
                    FuzzPath::Entries
                }
                (Err(_), Err(_)) => FuzzPath::Request(T_APPEND),
                _ => panic!("check_entries {:?} disagrees with decode_entries {:?}", checked.is_ok(), decoded.is_ok()),
            }
        }
        Ok(Request::Hello { generation, volume, token, .. }) => {
            if volume.len() <= 255 && token.len() <= MAX_TOKEN {
                let again = hello_frame(generation, &volume, &token);
                // The version is not the encoder's to choose: compare the rest.
                assert_eq!(again[FRAME_HEADER + 7..], body[7..], "HELLO does not re-encode to its frame");
            }
            FuzzPath::Request(T_HELLO)
        }
        Ok(Request::Sync { req }) => {
            assert_eq!(&simple_frame(T_SYNC, req, 0)[FRAME_HEADER..], body);
            FuzzPath::Request(T_SYNC)
        }
        Ok(Request::Query { req, after_sco }) => {
            assert_eq!(&simple_frame(T_QUERY, req, after_sco)[FRAME_HEADER..], body);
            FuzzPath::Request(T_QUERY)
        }
        Ok(Request::Trim { req, upto_sco }) => {
            assert_eq!(&simple_frame(T_TRIM, req, upto_sco)[FRAME_HEADER..], body);
            FuzzPath::Request(T_TRIM)
        }
        Err(_) if reply.is_ok() => FuzzPath::Reply,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            FuzzPath::Malformed
        }
    }
}

fn check_reply(r: &Reply, body: &[u8]) {
    if let Reply::Entries { entries, .. } = r {
        let mut raw = Vec::new();
        for (seq, e) in entries {
            e.validate().expect("a decoded entry is valid");
            e.encode(*seq, &mut raw);
        }
        assert_eq!(raw, body[13..], "ENTRIES do not re-encode to their frame");
    }
}
