//! The S3 store against a real S3-compatible server (SeaweedFS `weed mini` on loopback):
//! the ObjectStore contract (as the local store's), create-only puts (also racing and
//! multipart), ranged and suffix reads, paginated listings, clear errors for bad
//! credentials / missing bucket / unreachable endpoint without leaking credentials, and
//! reads of a frozen server failing in bounded time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use common::s3::{rt, shared, Weed};
use logdisk::backend::s3::S3Store;
use logdisk::backend::url::BackendUrl;
use logdisk::backend::ObjectStore;
use logdisk::Error;

/// The local store's unit test, verbatim in spirit, on S3 with and without a prefix.
fn contract(s: &dyn ObjectStore) {
    s.put("v/a/1", b"hello").unwrap();
    s.put("v/a/2", b"world!").unwrap();
    s.put("w/x", b"").unwrap();
    assert!(matches!(s.put("v/a/1", b"x"), Err(Error::ObjectExists(_))));
    assert_eq!(s.get("v/a/1").unwrap(), b"hello");
    assert_eq!(s.get("w/x").unwrap(), b"");
    assert_eq!(s.get_range("v/a/2", 1, 3).unwrap(), b"orl");
    assert_eq!(s.get_range("v/a/2", 4, 30).unwrap(), b"d!");
    assert_eq!(s.get_range("v/a/2", 6, 5).unwrap(), b"", "range at the end");
    assert_eq!(s.get_range("v/a/2", 100, 5).unwrap(), b"", "range past the end");
    assert_eq!(s.get_range("v/a/2", 0, 0).unwrap(), b"");
    assert_eq!(s.get_tail("v/a/2", 2).unwrap(), (b"d!".to_vec(), 6));
    assert_eq!(s.get_tail("v/a/2", 100).unwrap(), (b"world!".to_vec(), 6), "tail longer than the object");
    assert_eq!(s.get_tail("v/a/2", 0).unwrap(), (Vec::new(), 6));
    assert_eq!(s.get_tail("w/x", 16).unwrap(), (Vec::new(), 0), "tail of an empty object");
    let keys: Vec<_> = s.list("v/").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, vec!["v/a/1", "v/a/2"]);
    let sizes: Vec<_> = s.list("").unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    assert_eq!(sizes, vec![("v/a/1".into(), 5), ("v/a/2".into(), 6), ("w/x".into(), 0)]);
    assert_eq!(s.list_children("").unwrap(), vec!["v", "w"]);
    assert_eq!(s.list_children("v/").unwrap(), vec!["a"]);
    assert_eq!(s.list_children("v/a/").unwrap(), vec!["1", "2"]);
    assert!(s.list_children("nothing/").unwrap().is_empty());
    assert!(matches!(s.get("v/zz"), Err(Error::ObjectNotFound(_))));
    assert!(matches!(s.get_range("v/zz", 0, 10), Err(Error::ObjectNotFound(_))));
    assert!(matches!(s.get_tail("v/zz", 10), Err(Error::ObjectNotFound(_))));
    assert!(s.get("../etc/passwd").is_err());
    s.delete("v/a/1").unwrap();
    s.delete("v/a/1").unwrap();
    s.delete("v/a/2").unwrap();
    assert_eq!(s.list_children("").unwrap(), vec!["w"]);
    // A deleted key can be created again.
    s.put("v/a/1", b"again").unwrap();
    assert_eq!(s.get("v/a/1").unwrap(), b"again");
    // Batched deletes (DeleteObjects): every key goes, missing ones are no error,
    // nothing else is touched.
    let keys: Vec<String> = (0..5).map(|i| format!("v/b/{i}")).collect();
    for k in &keys {
        s.put(k, k.as_bytes()).unwrap();
    }
    let mut doomed = keys[..4].to_vec();
    doomed.push("v/b/missing".into());
    s.delete_many(&doomed).unwrap();
    let left: Vec<String> = s.list("v/b/").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(left, vec!["v/b/4".to_string()]);
    s.delete_many(&[]).unwrap();
    s.delete("v/b/4").unwrap();
    s.delete("v/a/1").unwrap();
}

#[test]
fn contract_without_prefix() {
    let (_, s) = shared().new_store("contract", "");
    contract(s.as_ref());
    assert!(s.url().starts_with("s3://t"), "{}", s.url());
}

#[test]
fn contract_with_prefix_stays_inside_it() {
    let w = shared();
    let (bucket, s) = w.new_store("prefix", "some/prefix");
    // A neighbour outside the prefix is invisible.
    let other = S3Store::open(&bucket, "", &w.config()).unwrap();
    other.put("outside", b"x").unwrap();
    other.put("some/prefixed-not", b"x").unwrap();
    contract(s.as_ref());
    assert_eq!(s.url(), format!("s3://{bucket}/some/prefix"));
    assert!(other.get("some/prefix/w/x").is_ok(), "keys live under PREFIX/");
    // Through the URL parser as the data dir does it.
    let via_url = BackendUrl::parse(&s.url())
        .unwrap()
        .open_with(&logdisk::config::Config { s3: w.config(), ..Default::default() })
        .unwrap();
    assert_eq!(via_url.get("w/x").unwrap(), b"");
}

#[test]
fn large_objects_go_up_in_parts_and_stay_create_only() {
    let w = shared();
    let mut cfg = w.config();
    cfg.multipart_threshold = logdisk::config::ByteSize(6 << 20);
    cfg.part_size = logdisk::config::ByteSize(5 << 20);
    cfg.multipart_concurrency = 2;
    let bucket = w.new_bucket("multipart");
    let s = S3Store::open(&bucket, "p", &cfg).unwrap();
    let data: Vec<u8> = (0..(17u32 << 20) + 12345).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
    let t0 = Instant::now();
    s.put("big", &data).unwrap();
    eprintln!("multipart put of {} bytes: {:?}", data.len(), t0.elapsed());
    let st = s.stats();
    assert_eq!(st.multipart_uploads, 1);
    assert_eq!(st.part_requests, 3, "17 MiB in 5 MiB parts, the last one 7 MiB");
    assert_eq!(s.get("big").unwrap(), data);
    let off = (10 << 20) - 100;
    assert_eq!(s.get_range("big", off, 300).unwrap(), &data[off as usize..off as usize + 300], "across parts");
    let (tail, size) = s.get_tail("big", 4096).unwrap();
    assert_eq!(size, data.len() as u64);
    assert_eq!(tail, &data[data.len() - 4096..]);
    assert!(matches!(s.put("big", &data), Err(Error::ObjectExists(_))));
    assert_eq!(s.list("").unwrap()[0].size, data.len() as u64);
    // No multipart uploads are left open.
    let c = w.client();
    let open = rt().block_on(async { c.list_multipart_uploads().bucket(&bucket).send().await.unwrap() });
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
}

/// The server itself refuses a second create of a key: PutObject and
/// CompleteMultipartUpload with `If-None-Match: *` (no HEAD of ours in between).
#[test]
fn server_honours_if_none_match() {
    let w = shared();
    let bucket = w.new_bucket("ifnonematch");
    let c = w.client();
    rt().block_on(async {
        c.put_object()
            .bucket(&bucket)
            .key("k")
            .if_none_match("*")
            .body(ByteStream::from_static(b"one"))
            .send()
            .await
            .unwrap();
        let e = c
            .put_object()
            .bucket(&bucket)
            .key("k")
            .if_none_match("*")
            .body(ByteStream::from_static(b"two"))
            .send()
            .await;
        let e = e.expect_err("second conditional put must fail");
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412), "{:?}", e);
        // Multipart onto an existing key.
        let up = c.create_multipart_upload().bucket(&bucket).key("k").send().await.unwrap();
        let id = up.upload_id().unwrap();
        let part = c
            .upload_part()
            .bucket(&bucket)
            .key("k")
            .upload_id(id)
            .part_number(1)
            .body(ByteStream::from(vec![7u8; 1 << 20]))
            .send()
            .await
            .unwrap();
        let done = CompletedMultipartUpload::builder()
            .parts(CompletedPart::builder().part_number(1).e_tag(part.e_tag().unwrap()).build())
            .build();
        let r = c
            .complete_multipart_upload()
            .bucket(&bucket)
            .key("k")
            .upload_id(id)
            .multipart_upload(done)
            .if_none_match("*")
            .send()
            .await;
        let e = r.expect_err("conditional multipart completion onto an existing key must fail");
        let status = e.raw_response().map(|r| r.status().as_u16());
        assert!(matches!(status, Some(412) | Some(409)), "{status:?}");
        let _ = c.abort_multipart_upload().bucket(&bucket).key("k").upload_id(id).send().await;
        let body = c.get_object().bucket(&bucket).key("k").send().await.unwrap().body.collect().await.unwrap();
        assert_eq!(&body.into_bytes()[..], b"one");
    });
}

#[test]
fn racing_creates_have_one_winner() {
    let (_, s) = shared().new_store("race", "");
    for round in 0..5 {
        let key = format!("k{round}");
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let (s, key) = (s.clone(), key.clone());
                    sc.spawn(move || (i, s.put(&key, &[i; 1000])))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<u8> = results.iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, r) in &results {
            assert!(matches!(r, Ok(()) | Err(Error::ObjectExists(_))), "{r:?}");
        }
        assert_eq!(s.get(&key).unwrap(), vec![winners[0]; 1000], "the winner's data stays");
    }
}

#[test]
fn listings_paginate() {
    let w = shared();
    let (bucket, s) = w.new_store("pages", "pfx");
    let n: usize = 1100;
    std::thread::scope(|sc| {
        for t in 0..8 {
            let s = s.clone();
            sc.spawn(move || {
                for i in (t..n).step_by(8) {
                    s.put(&format!("vol/g000001/sco/{i:016x}"), &i.to_le_bytes()).unwrap();
                }
            });
        }
    });
    s.put("vol/meta/volume/0000000000000001", b"m").unwrap();
    let all = s.list("vol/g000001/sco/").unwrap();
    assert_eq!(all.len(), n, "more than one page of 1000");
    assert!(all.windows(2).all(|p| p[0].key < p[1].key), "sorted");
    assert_eq!(all[1099].key, format!("vol/g000001/sco/{:016x}", 1099));
    assert_eq!(s.list_children("vol/").unwrap(), vec!["g000001", "meta"]);
    assert_eq!(s.list_children("vol/g000001/sco/").unwrap().len(), n);
    // Small pages, both kinds of listing.
    let mut cfg = w.config();
    cfg.list_page_size = 7;
    let small = S3Store::open(&bucket, "pfx", &cfg).unwrap();
    assert_eq!(small.list("vol/").unwrap().len(), n + 1);
    assert_eq!(small.list_children("vol/").unwrap(), vec!["g000001", "meta"]);
    assert_eq!(small.list_children("vol/g000001/sco/").unwrap().len(), n);
    let lists = small.stats().list_requests;
    assert!(lists >= 2 * (n as u64 / 7), "pagination used {lists} requests");
}

fn assert_no_secrets(msg: &str, w: &Weed) {
    eprintln!("message: {msg}");
    assert!(!msg.contains(&w.secret_key), "secret leaked: {msg}");
    assert!(!msg.contains(&w.access_key), "access key id leaked: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn open_errors_are_clear_and_leak_nothing() {
    let w = shared();
    let bucket = w.new_bucket("errors");

    // Wrong secret.
    let mut cfg = w.config();
    cfg.secret_access_key = Some(format!("{}x", w.secret_key));
    let e = S3Store::open(&bucket, "", &cfg).err().expect("bad secret must fail").to_string();
    assert!(e.contains("credentials rejected"), "{e}");
    assert_no_secrets(&e, w);
    assert!(!e.contains(cfg.secret_access_key.as_deref().unwrap()), "{e}");

    // Unknown access key.
    let mut cfg = w.config();
    cfg.access_key_id = Some("LDNOSUCHKEY000000000".into());
    let e = S3Store::open(&bucket, "", &cfg).err().expect("unknown key must fail").to_string();
    assert!(e.contains("credentials rejected"), "{e}");
    assert!(!e.contains("LDNOSUCHKEY000000000"), "{e}");
    assert_no_secrets(&e, w);

    // Missing bucket.
    let e = S3Store::open("no-such-bucket-here", "", &w.config()).err().expect("missing bucket").to_string();
    assert!(e.contains("no-such-bucket-here") && e.contains("does not exist"), "{e}");
    assert_no_secrets(&e, w);

    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = w.config();
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let t0 = Instant::now();
    let e = S3Store::open(&bucket, "", &cfg).err().expect("unreachable endpoint").to_string();
    assert!(e.contains("cannot reach") && e.to_lowercase().contains("refused"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(15), "took {:?}", t0.elapsed());
    assert_no_secrets(&e, w);

    // A good store: its URL and errors carry no credentials either.
    let s = S3Store::open(&bucket, "x", &w.config()).unwrap();
    assert_no_secrets(&s.url(), w);
    let e = s.get("missing").unwrap_err().to_string();
    assert_no_secrets(&e, w);
}

/// Endpoint, region and credentials from the standard AWS environment (no `[s3]`
/// section at all), checked in a child process so this one's environment stays as is.
#[test]
fn settings_from_the_aws_environment() {
    let w = shared();
    let bucket = w.new_bucket("envcfg");
    let t = tempfile::tempdir().unwrap();
    let creds = t.path().join("credentials");
    std::fs::write(
        &creds,
        format!("[logdisk-test]\naws_access_key_id = {}\naws_secret_access_key = {}\n", w.access_key, w.secret_key),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let run = |label: &str, envs: Vec<(&str, String)>| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--exact", "env_child", "--ignored", "--nocapture", "--test-threads=1"]);
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("LOGDISK_S3_CHILD_URL", format!("s3://{bucket}/{label}"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", t.path().join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_ENDPOINT_URL", &w.endpoint);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("env_child ok"), "{label}: {text}");
    };
    run("env", vec![("AWS_ACCESS_KEY_ID", w.access_key.clone()), ("AWS_SECRET_ACCESS_KEY", w.secret_key.clone())]);
    run("profile", vec![("AWS_PROFILE", "logdisk-test".into())]);
    let keys: Vec<_> = shared_store(&bucket).list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, vec!["env/a", "profile/a"]);
}

fn shared_store(bucket: &str) -> S3Store {
    S3Store::open(bucket, "", &shared().config()).unwrap()
}

/// Runs only as the child of `settings_from_the_aws_environment`.
#[test]
#[ignore]
fn env_child() {
    let Ok(url) = std::env::var("LOGDISK_S3_CHILD_URL") else { return };
    let s = BackendUrl::parse(&url).unwrap().open().expect("open from the AWS environment alone");
    s.put("a", b"b").unwrap();
    assert_eq!(s.get("a").unwrap(), b"b");
    assert_eq!(s.url(), url);
    println!("env_child ok");
}

/// A frozen server (SIGSTOP) never hangs a reader: the read fails with a timeout within
/// the configured time, and works again once the server resumes. A private server, so
/// the other tests are not frozen.
#[test]
fn frozen_server_times_out_reads() {
    let w = Weed::start();
    let bucket = w.new_bucket("frozen");
    let mut cfg = w.config();
    cfg.read_timeout_secs = Some(3);
    cfg.read_attempt_timeout_secs = 1;
    let s = Arc::new(S3Store::open(&bucket, "", &cfg).unwrap());
    s.put("obj", &[5u8; 100_000]).unwrap();
    w.freeze();
    let t0 = Instant::now();
    let r = s.get_range("obj", 0, 4096);
    let took = t0.elapsed();
    let r2 = s.list("");
    let t1 = Instant::now();
    let r3 = s.get("obj");
    let took3 = t1.elapsed();
    w.thaw();
    assert!(matches!(r3, Err(Error::StoreTimeout { .. })), "{r3:?}");
    assert!(took3 < Duration::from_secs(6), "whole-object get took {took3:?}");
    assert!(matches!(r, Err(Error::StoreTimeout { secs: 3, .. })), "{r:?}");
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(6), "took {took:?}");
    assert!(matches!(r2, Err(Error::StoreTimeout { .. })), "{r2:?}");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("timed out after 3 s"), "{msg}");
    // Back to normal.
    let t0 = Instant::now();
    loop {
        match s.get_range("obj", 10, 10) {
            Ok(v) => {
                assert_eq!(v, [5u8; 10]);
                break;
            }
            Err(e) if t0.elapsed() < Duration::from_secs(20) => eprintln!("after thaw: {e}"),
            Err(e) => panic!("server did not come back: {e}"),
        }
    }
}
