//! Unit tests of the DTL wire format: round trips of every message, and rejection of
//! bad frames, entries, names and tokens.

use super::*;

fn body(frame: &[u8]) -> Vec<u8> {
    let mut r = frame;
    let mut b = Vec::new();
    assert!(read_frame(&mut r, MAX_FRAME, &mut b).unwrap());
    assert!(r.is_empty());
    b
}

#[test]
fn hello_round_trip() {
    let f = hello_frame(7, "vol-1", b"secret");
    match Request::decode(&body(&f)).unwrap() {
        Request::Hello { version, generation, volume, token } => {
            assert_eq!((version, generation, volume.as_str(), token.as_slice()), (VERSION, 7, "vol-1", &b"secret"[..]));
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn append_and_entries_round_trip() {
    let es = [Entry::data(3, 1, 99, vec![7; 8192]), Entry::record(3, b"discard 5..9".to_vec())];
    let f = append_frame(42, es.iter().enumerate().map(|(i, e)| (10 + i as u64, e)));
    let b = body(&f);
    let Request::Append { req, count, raw } = Request::decode(&b).unwrap() else { panic!() };
    assert_eq!((req, count), (42, 2));
    let heads = check_entries(raw, count).unwrap();
    assert_eq!(heads.iter().map(|h| (h.seq, h.sco)).collect::<Vec<_>>(), [(10, 3), (11, 3)]);
    let decoded = decode_entries(raw, count).unwrap();
    assert_eq!(decoded, vec![(10, es[0].clone()), (11, es[1].clone())]);
    // The same entries as a query reply.
    let mut f = FrameBuf::new(T_ENTRIES);
    f.u64(5).u32(2).bytes(raw);
    assert_eq!(Reply::decode(&body(&f.finish())).unwrap(), Reply::Entries { req: 5, entries: decoded });
}

#[test]
fn bad_frames_are_rejected() {
    let f = simple_frame(T_SYNC, 1, 0);
    // Truncated anywhere.
    for cut in 1..f.len() {
        let mut r = &f[..cut];
        assert!(matches!(read_frame(&mut r, MAX_FRAME, &mut Vec::new()), Err(ProtoError::Truncated)), "cut {cut}");
    }
    // Empty stream is a clean end.
    assert!(!read_frame(&mut &[][..], MAX_FRAME, &mut Vec::new()).unwrap());
    // Flipped bit.
    let mut bad = f.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(read_frame(&mut &bad[..], MAX_FRAME, &mut Vec::new()), Err(ProtoError::BadChecksum)));
    // Oversized length: refused before reading a body.
    let mut big = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
    big.extend_from_slice(&[0; 4]);
    assert!(matches!(read_frame(&mut &big[..], MAX_FRAME, &mut Vec::new()), Err(ProtoError::TooLarge(_))));
    assert!(matches!(read_frame(&mut &f[..], 4, &mut Vec::new()), Err(ProtoError::TooLarge(_))));
    // Trailing bytes, unknown type, short bodies.
    let mut fb = FrameBuf::new(T_SYNC);
    fb.u64(1).u8(0);
    assert!(Request::decode(&body(&fb.finish())).is_err());
    assert!(Request::decode(&[0x77]).is_err());
    assert!(Request::decode(&[T_QUERY, 1, 2]).is_err());
    assert!(Reply::decode(&[T_WELCOME, 1]).is_err());
}

#[test]
fn entry_limits() {
    assert!(Entry::data(0, 0, 0, vec![0; 100]).validate().is_err());
    assert!(Entry::data(0, 0, 0, vec![]).validate().is_err());
    assert!(Entry::data(0, 0, 0, vec![0; MAX_DATA + BLOCK]).validate().is_err());
    assert!(Entry::data(0, 0, 0, vec![0; MAX_DATA]).validate().is_ok());
    assert!(Entry::record(0, vec![0; MAX_DATA + 1]).validate().is_err());
    // A count that claims more entries than the bytes hold, or fewer.
    let mut raw = Vec::new();
    Entry::record(1, vec![1, 2, 3]).encode(1, &mut raw);
    assert!(check_entries(&raw, 2).is_err());
    assert!(check_entries(&raw, 0).is_err());
    assert!(check_entries(&raw, 1).is_ok());
    // Unknown kind, huge payload length.
    let mut k = raw.clone();
    k[16] = 9;
    assert!(check_entry(&k).is_err());
    let mut l = raw.clone();
    l[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(check_entry(&l).is_err());
}

#[test]
fn random_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..20000 {
        let n = rng.gen_range(0..64);
        let mut b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        if !b.is_empty() && rng.gen_bool(0.7) {
            b[0] = [T_HELLO, T_APPEND, T_SYNC, T_QUERY, T_TRIM, T_WELCOME, T_ENTRIES, T_ERROR][rng.gen_range(0..8)];
        }
        let _ = Request::decode(&b);
        let _ = Reply::decode(&b);
        let _ = check_entry(&b);
        let _ = read_frame(&mut &b[..], MAX_FRAME, &mut Vec::new());
    }
}

#[test]
fn names_and_tokens() {
    assert!(valid_name("vm1") && valid_name("a.b_c-d") && valid_name(&"x".repeat(64)));
    assert!(
        !valid_name("") && !valid_name(".x") && !valid_name("-x") && !valid_name("a/b") && !valid_name(&"x".repeat(65))
    );
    assert!(token_eq(b"abc", b"abc"));
    assert!(!token_eq(b"abc", b"abd") && !token_eq(b"abc", b"ab") && !token_eq(b"", b"a"));
}
