//! S3 over https with a private CA given in the config: SeaweedFS serves S3 with a
//! certificate signed by a CA made at test time; a volume is created, written, and read
//! back from an empty data dir over https. Without the CA (system roots only) or with a
//! bad CA file, opening the store fails with one clear line.

mod common;

#[path = "common/tls.rs"]
mod tls;

use common::s3::Weed;
use common::{small_config, write_random};
use logdisk::config::Config;
use logdisk::datadir::DataDir;

const SIZE: u64 = 4 << 20;

fn https_config(w: &Weed, ca: Option<&std::path::Path>) -> Config {
    let mut c = small_config();
    c.s3 = w.config();
    c.s3.endpoint = w.https_endpoint.clone();
    c.s3.ca_file = ca.map(|p| p.to_path_buf());
    c.s3.max_attempts = 1;
    c
}

#[test]
fn volume_round_trip_over_https_with_a_private_ca() {
    let t = tempfile::tempdir().unwrap();
    let certs = tls::make(&t.path().join("certs"), &["IP:127.0.0.1", "DNS:localhost"]);
    let w = Weed::start_https(&certs.cert, &certs.key);
    assert!(w.https_endpoint.as_deref().unwrap().starts_with("https://"));
    let bucket = w.new_bucket("https");
    let url = format!("s3://{bucket}/tls");

    let image = {
        let mut dd = DataDir::open(&t.path().join("a"), Some(&url), https_config(&w, Some(&certs.ca))).unwrap();
        dd.create_volume("v", SIZE, None, None).unwrap();
        let vol = dd.open_volume("v", false).unwrap();
        let image = write_random(&vol, SIZE, 21);
        assert!(vol.close().unwrap().drained, "everything uploaded over https");
        image
    };
    // A fresh host reads every byte back from the bucket over https.
    let mut dd = DataDir::open(&t.path().join("b"), Some(&url), https_config(&w, Some(&certs.ca))).unwrap();
    let vol = dd.open_volume("v", true).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    vol.read_at(0, &mut got).unwrap();
    assert!(got == image, "read back over https differs");
    vol.close().unwrap();
    drop(vol);
    drop(dd);

    // Without the CA the certificate is not trusted: a clear one-line error.
    let e = DataDir::open(&t.path().join("c"), Some(&url), https_config(&w, None)).err().expect("must fail");
    let msg = e.to_string();
    eprintln!("without the CA: {msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.to_lowercase().contains("certificate") || msg.contains("UnknownIssuer"), "{msg}");

    // A CA file that holds no certificate is refused before any request.
    std::fs::write(t.path().join("bad.pem"), "not a certificate\n").unwrap();
    let e = DataDir::open(&t.path().join("d"), Some(&url), https_config(&w, Some(&t.path().join("bad.pem"))))
        .err()
        .expect("must fail");
    let msg = e.to_string();
    eprintln!("a bad CA file: {msg}");
    assert!(msg.contains("s3.ca_file") && msg.contains("bad.pem"), "{msg}");
}
