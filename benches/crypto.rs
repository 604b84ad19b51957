//! Uploader CPU per MiB with and without encryption: encoding 32 MiB SCOs (16 KiB..64 KiB
//! frames, LZ4, half random, half text-like data) plain vs sealed (AES-256-GCM), and
//! decoding (ranged-read path) both. Single thread; `cargo bench --bench crypto`.

use std::time::Instant;

use logdisk::backend::sco_object::{self, Codec};
use logdisk::crypto::cipher::{random_salt, ObjectCipher};
use logdisk::crypto::VolumeKey;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn main() {
    let len = 32 << 20;
    let frame = 64 << 10;
    let mut raw = vec![0u8; len];
    let mut rng = StdRng::seed_from_u64(1);
    rng.fill(&mut raw[..len / 2]);
    for (i, b) in raw[len / 2..].iter_mut().enumerate() {
        *b = b"account paid to; line "[(i * 7 + i / 97) % 22];
    }
    let key = VolumeKey::from_bytes([9u8; 32]);
    let rounds = 8;
    let mut out = vec![0u8; sco_object::max_encoded_len(len, frame)];
    for sealed in [false, true] {
        let t = Instant::now();
        let mut n = 0;
        for r in 0..rounds {
            let c = ObjectCipher::derive(&key, random_salt(), &format!("v/g000001/sco/{r}"));
            n = sco_object::encode_into(&raw, frame, Codec::Lz4, sealed.then_some(&c), &mut out);
        }
        let enc = t.elapsed().as_secs_f64() / rounds as f64;
        let c = std::sync::Arc::new(ObjectCipher::derive(&key, random_salt(), "k"));
        let obj = sco_object::encode_sealed(&raw, frame, Codec::Lz4, sealed.then_some(&*c));
        let ix = sco_object::parse_object_index_with("k", &obj, sealed.then(|| c.clone())).unwrap();
        let t = Instant::now();
        let mut buf = vec![0u8; frame];
        for _ in 0..rounds {
            for (i, e) in ix.frames.iter().enumerate() {
                let mut st = obj[e.offset as usize..(e.offset + e.stored_len as u64) as usize].to_vec();
                ix.decode_frame("k", i, &mut st, &mut buf[..e.raw_len as usize]).unwrap();
            }
        }
        let dec = t.elapsed().as_secs_f64() / rounds as f64;
        let mib = len as f64 / (1 << 20) as f64;
        println!(
            "{:6}: encode {:7.1} MiB/s ({:.2} ms CPU/MiB), decode {:7.1} MiB/s ({:.2} ms CPU/MiB), object {} bytes",
            if sealed { "sealed" } else { "plain" },
            mib / enc,
            enc * 1000.0 / mib,
            mib / dec,
            dec * 1000.0 / mib,
            n
        );
    }
}
