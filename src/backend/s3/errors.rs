//! Turning SDK failures into the library's errors: missing objects, create-only
//! conflicts, timeouts, unreachable endpoints, rejected credentials and transient server
//! errors, each as one short line with every known secret redacted.

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::Error;

/// Strings that must never appear in a message (access key id, secret, session token).
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        Redactor { secrets: secrets.into_iter().filter(|s| s.len() >= 4).collect() }
    }

    pub(crate) fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "<redacted>");
            }
        }
        out
    }

    /// Redact the free-text parts of an error.
    pub(crate) fn error(&self, e: Error) -> Error {
        match e {
            Error::Store(m) => Error::Store(self.text(&m)),
            Error::StoreTimeout { what, secs } => Error::StoreTimeout { what: self.text(&what), secs },
            other => other,
        }
    }
}

/// What a failed request was doing, for messages.
pub(crate) struct Ctx<'a> {
    /// "get", "put", "list", ...
    pub op: &'static str,
    /// The caller's key (without the store prefix) or listing prefix.
    pub key: &'a str,
    pub bucket: &'a str,
    /// The time budget reported when the request timed out.
    pub timeout_secs: u64,
}

/// The HTTP status and S3 error code of a service error, if the server answered.
pub(crate) fn status_and_code<E: ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
) -> (Option<u16>, Option<String>) {
    let status = match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => err.raw_response().map(|r| r.status().as_u16()),
        _ => None,
    };
    let code = match err {
        SdkError::ServiceError(_) => err.code().map(str::to_string),
        _ => None,
    };
    (status, code)
}

/// True when the request never got an answer in time (attempt or operation timeout).
pub(crate) fn is_timeout<E>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(d) => d.is_timeout(),
        _ => false,
    }
}

/// The most telling line of an error's source chain: the innermost io::Error if there
/// is one (e.g. "Connection refused (os error 111)"), else the last source.
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    let mut last = err.to_string();
    let mut io: Option<String> = None;
    while let Some(e) = cur {
        if let Some(ioe) = e.downcast_ref::<std::io::Error>() {
            io = Some(ioe.to_string());
        }
        let s = e.to_string();
        if !s.is_empty() {
            last = s;
        }
        cur = e.source();
    }
    io.unwrap_or(last)
}

fn short(s: &str) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() > 200 {
        one_line.chars().take(200).collect::<String>() + "…"
    } else {
        one_line
    }
}

/// Classify a failed request. 404 → `ObjectNotFound`; 412 / 409 ConditionalRequestConflict
/// → `ObjectExists`; timeouts → `StoreTimeout`; everything else → `Store` with a short
/// reason (the uploader retries those with backoff).
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>, ctx: &Ctx<'_>) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let what = format!("{} {}", ctx.op, ctx.key);
    if is_timeout(&err) {
        return Error::StoreTimeout { what, secs: ctx.timeout_secs };
    }
    match &err {
        SdkError::ServiceError(_) => {
            let (status, code) = status_and_code(&err);
            let code_s = code.clone().unwrap_or_default();
            let msg = err.message().map(short).unwrap_or_default();
            match (status, code_s.as_str()) {
                (_, "NoSuchBucket") => Error::Store(format!("{what}: bucket {} does not exist", ctx.bucket)),
                (_, "NoSuchKey") | (Some(404), _) => Error::ObjectNotFound(ctx.key.to_string()),
                (_, "PreconditionFailed") | (Some(412), _) | (_, "ConditionalRequestConflict") => {
                    Error::ObjectExists(ctx.key.to_string())
                }
                (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => Error::Store(format!(
                    "{what}: credentials rejected by the server ({code_s}): check the access key id and secret"
                )),
                (Some(403), _) => {
                    Error::Store(format!("{what}: access denied (403 {code_s}) {msg}").trim_end().to_string())
                }
                (Some(s), _) if s >= 500 => {
                    Error::Store(format!("{what}: server error {s} {code_s}").trim_end().to_string())
                }
                (Some(s), _) => Error::Store(format!("{what}: HTTP {s} {code_s} {msg}").trim_end().to_string()),
                (None, _) => Error::Store(format!("{what}: {code_s} {msg}").trim_end().to_string()),
            }
        }
        SdkError::DispatchFailure(d) => {
            let cause = d.as_connector_error().map(|c| root_cause(c)).unwrap_or_else(|| root_cause(&err));
            if d.is_io() {
                Error::Store(format!("{what}: cannot reach the endpoint: {}", short(&cause)))
            } else {
                Error::Store(format!("{what}: request failed: {}", short(&cause)))
            }
        }
        SdkError::ResponseError(_) => {
            Error::Store(format!("{what}: bad or broken response: {}", short(&root_cause(&err))))
        }
        SdkError::ConstructionFailure(_) => {
            Error::Store(format!("{what}: cannot build the request: {}", short(&root_cause(&err))))
        }
        _ => Error::Store(format!("{what}: {}", short(&root_cause(&err)))),
    }
}

/// Classify an error that happened while reading a response body.
pub(crate) fn body_error(err: &(dyn StdError + 'static), ctx: &Ctx<'_>) -> Error {
    let cause = root_cause(err);
    Error::Store(format!("{} {}: reading the response failed: {}", ctx.op, ctx.key, short(&cause)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secrets_and_keeps_short_strings() {
        let r = Redactor::new(["AKIDEXAMPLE".to_string(), "abc".to_string()]);
        assert_eq!(r.text("key AKIDEXAMPLE rejected, abc"), "key <redacted> rejected, abc");
        match r.error(Error::Store("x AKIDEXAMPLE".into())) {
            Error::Store(m) => assert_eq!(m, "x <redacted>"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn root_cause_prefers_io_errors() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(root_cause(&e).contains("refused"), "{}", root_cause(&e));
        assert_eq!(short(&"x".repeat(300)).chars().count(), 201);
    }
}
