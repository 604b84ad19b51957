//! Backend URLs: `file:///path` (local directory) and `s3://BUCKET/PREFIX` (S3; the
//! prefix is optional). Credentials never belong in a URL: they come from the config
//! file or the standard AWS sources, so the URL can be recorded and printed safely.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::local::LocalStore;
#[cfg(feature = "s3")]
use crate::backend::s3::S3Store;
use crate::backend::ObjectStore;
use crate::config::Config;
use crate::error::{Error, Result};

/// A parsed backend URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    File(PathBuf),
    /// Keys are stored as `PREFIX/key` (just `key` when the prefix is empty).
    S3 {
        bucket: String,
        prefix: String,
    },
}

/// S3 bucket naming rules (3–63 of `a-z0-9.-`, starting and ending alphanumeric).
fn valid_bucket(b: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    (3..=63).contains(&b.len())
        && b.chars().all(ok_char)
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn parse_s3(s: &str, rest: &str) -> Result<BackendUrl> {
    let bad = |why: &str| Error::InvalidArgument(format!("bad backend URL {s:?}: {why}"));
    if rest.contains('@') {
        // Do not echo the URL: it may hold a secret.
        return Err(Error::InvalidArgument(
            "bad backend URL s3://...: credentials do not belong in the URL (use the [s3] config section or AWS_* variables)"
                .into(),
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("query strings are not supported (endpoint and region go in the [s3] config section)"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_bucket(bucket) {
        return Err(bad("the bucket name must be 3-63 characters of a-z, 0-9, '.' and '-' (s3://BUCKET/PREFIX)"));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() && prefix.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad("the prefix must not contain empty, '.' or '..' components"));
    }
    Ok(BackendUrl::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() })
}

impl BackendUrl {
    pub fn parse(s: &str) -> Result<BackendUrl> {
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "bad backend URL {s:?}: a file URL needs an absolute path (file:///path)"
                )));
            }
            return Ok(BackendUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            return parse_s3(s, rest);
        }
        Err(Error::InvalidArgument(format!(
            "bad backend URL {s:?}: supported schemes are file:///path and s3://BUCKET/PREFIX"
        )))
    }

    /// Open the store with the default configuration (S3 settings then come from the
    /// standard AWS sources only).
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>> {
        self.open_with(&Config::default())
    }

    /// Open the store with the `[s3]` section of `config` (unused for `file://`); the S3
    /// read deadline defaults to `io.backend_read_timeout_secs`.
    pub fn open_with(&self, config: &Config) -> Result<Arc<dyn ObjectStore>> {
        match self {
            BackendUrl::File(p) => Ok(Arc::new(LocalStore::open(p)?)),
            BackendUrl::S3 { bucket, prefix } => {
                #[cfg(feature = "s3")]
                {
                    let mut s3 = config.s3.clone();
                    s3.read_timeout_secs.get_or_insert(config.io.backend_read_timeout_secs);
                    Ok(Arc::new(S3Store::open(bucket, prefix, &s3)?))
                }
                #[cfg(not(feature = "s3"))]
                {
                    let _ = (bucket, prefix, config);
                    Err(Error::Config("this logdisk was built without S3 support (cargo feature \"s3\")".into()))
                }
            }
        }
    }

    pub fn to_url(&self) -> String {
        match self {
            BackendUrl::File(p) => format!("file://{}", p.display()),
            BackendUrl::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            BackendUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        let u = BackendUrl::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(u, BackendUrl::S3 { bucket: "my-bucket".into(), prefix: "a/b".into() });
        assert_eq!(u.to_url(), "s3://my-bucket/a/b");
        assert_eq!(BackendUrl::parse(&u.to_url()).unwrap(), u);
        let u = BackendUrl::parse("s3://bkt").unwrap();
        assert_eq!(u, BackendUrl::S3 { bucket: "bkt".into(), prefix: String::new() });
        assert_eq!(u.to_url(), "s3://bkt");
        assert_eq!(BackendUrl::parse("s3://bkt/").unwrap(), u);
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-bkt",
            "s3://bkt/a//b",
            "s3://bkt/../x",
            "s3://key:secret@bkt/p",
            "s3://bkt/p?region=x",
            "http://bkt",
        ] {
            let e = BackendUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("bad backend URL"), "{bad}: {e}");
            assert!(!e.contains("key:secret"), "{e}");
        }
        assert!(BackendUrl::parse("file://rel").is_err());
    }
}
