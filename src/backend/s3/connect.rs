//! Building the S3 clients from the `[s3]` config section and the standard AWS sources:
//! endpoint (`AWS_ENDPOINT_URL`), region (`AWS_REGION`, profile, else us-east-1),
//! credentials (config, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, ...),
//! path-style addressing whenever a custom endpoint is set, timeouts and retries.
//! Then checking that the bucket is there, with one clear line for each way it is not.

use std::time::Duration;

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, ProvideCredentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::Client;

use super::errors::{is_timeout, root_cause, status_and_code, Redactor};
use crate::config::S3Config;
use crate::error::{Error, Result};

/// The clients of one store. Both share the SDK config and thus one connection pool.
pub(crate) struct Clients {
    /// GET, HEAD, LIST, DELETE: short attempts, an overall deadline.
    pub read: Client,
    /// PUT, multipart: long attempts (a part may take a while on a slow link).
    pub write: Client,
    /// Where requests go, for messages (no userinfo).
    pub endpoint: String,
    pub redactor: Redactor,
}

/// `scheme://host:port/path` without any `user:password@`.
fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, String::new()));
            let host = auth.rsplit_once('@').map(|(_, h)| h).unwrap_or(auth);
            format!("{scheme}://{host}{path}")
        }
        None => url.rsplit_once('@').map(|(_, h)| h.to_string()).unwrap_or_else(|| url.to_string()),
    }
}

/// The SDK's https client trusting the system roots plus `s3.ca_file` (checked here: the
/// SDK would panic on a bad PEM later).
fn https_client(ca_file: &std::path::Path) -> Result<aws_sdk_s3::config::SharedHttpClient> {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
    crate::dtl::tls::read_roots(ca_file).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("s3.ca_file: {m}")),
        e => e,
    })?;
    let pem = std::fs::read(ca_file).map_err(|e| Error::Config(format!("s3.ca_file {}: {e}", ca_file.display())))?;
    let ctx = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| Error::Config(format!("s3.ca_file: {e}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(ctx)
        .build_https())
}

async fn load_sdk_config(cfg: &S3Config) -> Result<SdkConfig> {
    let mut region_chain = RegionProviderChain::first_try(cfg.region.clone().map(Region::new))
        .or_else(EnvironmentVariableRegionProvider::new());
    let mut profile_region = ProfileFileRegionProvider::builder();
    if let Some(p) = &cfg.profile {
        profile_region = profile_region.profile_name(p);
    }
    region_chain = region_chain.or_else(profile_region.build()).or_else(Region::from_static("us-east-1"));
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region_chain);
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    if let Some(e) = &cfg.endpoint {
        loader = loader.endpoint_url(e);
    }
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "logdisk-config"));
    }
    if let Some(ca) = &cfg.ca_file {
        loader = loader.http_client(https_client(ca)?);
    }
    Ok(loader.load().await)
}

/// Build the clients and resolve the credentials once (for a clear error when there are
/// none, and to know which strings to redact).
pub(crate) async fn build(cfg: &S3Config) -> Result<Clients> {
    let sdk = load_sdk_config(cfg).await?;
    let env_s3_endpoint = std::env::var("AWS_ENDPOINT_URL_S3").ok().filter(|s| !s.is_empty());
    let custom = cfg.endpoint.clone().or_else(|| sdk.endpoint_url().map(str::to_string)).or(env_s3_endpoint);
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
    let endpoint = match &custom {
        Some(e) => strip_userinfo(e),
        None => format!("AWS S3 ({region})"),
    };
    let creds = match sdk.credentials_provider() {
        Some(p) => p.provide_credentials().await.map_err(|e| {
            Error::Store(format!(
                "no usable S3 credentials ({}): set s3.access_key_id/s3.secret_access_key in the config, \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an AWS profile",
                root_cause(&e)
            ))
        })?,
        None => return Err(Error::Store("no S3 credentials provider configured".into())),
    };
    let mut secrets = vec![creds.access_key_id().to_string(), creds.secret_access_key().to_string()];
    if let Some(t) = creds.session_token() {
        secrets.push(t.to_string());
    }
    for v in [&cfg.access_key_id, &cfg.secret_access_key].into_iter().flatten() {
        secrets.push(v.clone());
    }
    let redactor = Redactor::new(secrets);

    let path_style = cfg.path_style.unwrap_or(custom.is_some());
    let connect = Duration::from_secs(cfg.connect_timeout_secs);
    let retry = RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5));
    let checksums = match cfg.request_checksums.as_str() {
        "when_required" => RequestChecksumCalculation::WhenRequired,
        _ => RequestChecksumCalculation::WhenSupported,
    };
    let make = |timeouts: TimeoutConfig| {
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(path_style)
            .retry_config(retry.clone())
            .timeout_config(timeouts)
            .request_checksum_calculation(checksums);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        Client::from_conf(b.build())
    };
    let read = make(
        TimeoutConfig::builder()
            .connect_timeout(connect)
            .operation_attempt_timeout(Duration::from_secs(cfg.read_attempt_timeout_secs))
            .operation_timeout(Duration::from_secs(cfg.read_timeout()))
            .build(),
    );
    let write = make(
        TimeoutConfig::builder()
            .connect_timeout(connect)
            .operation_attempt_timeout(Duration::from_secs(cfg.write_attempt_timeout_secs))
            .build(),
    );
    tracing::debug!(%endpoint, %region, path_style, "S3 clients built");
    Ok(Clients { read, write, endpoint, redactor })
}

/// HeadBucket, and one clear line for a missing bucket, rejected credentials, a denied
/// bucket, another region, or an endpoint that cannot be reached.
pub(crate) async fn check_bucket(c: &Clients, bucket: &str, cfg: &S3Config) -> Result<()> {
    let ep = &c.endpoint;
    let err = match c.read.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if is_timeout(&err) {
        return Err(Error::Store(format!(
            "cannot reach S3 endpoint {ep}: no answer within {} s (is the server running?)",
            cfg.read_timeout()
        )));
    }
    let (status, _) = status_and_code(&err);
    let msg = match (&err, status) {
        (SdkError::DispatchFailure(d), _) => {
            let cause = d.as_connector_error().map(|e| root_cause(e)).unwrap_or_else(|| root_cause(&err));
            format!("cannot reach S3 endpoint {ep}: {cause}")
        }
        (_, Some(404)) => format!("S3 bucket {bucket} does not exist at {ep} (create it first)"),
        (_, Some(403)) | (_, Some(400)) => {
            // HEAD answers have no body: ask again with a request whose error has a code.
            let code = match c.read.list_objects_v2().bucket(bucket).max_keys(1).send().await {
                Ok(_) => None,
                Err(e) => status_and_code(&e).1,
            };
            match code.as_deref() {
                Some("InvalidAccessKeyId")
                | Some("SignatureDoesNotMatch")
                | Some("InvalidToken")
                | Some("ExpiredToken") => format!(
                    "S3 credentials rejected by {ep} ({}): check the access key id and secret",
                    code.unwrap_or_default()
                ),
                Some("NoSuchBucket") => format!("S3 bucket {bucket} does not exist at {ep} (create it first)"),
                Some("AuthorizationHeaderMalformed") | Some("PermanentRedirect") => format!(
                    "S3 bucket {bucket} is not in region {} at {ep} ({}): set s3.region or AWS_REGION",
                    cfg.region.as_deref().unwrap_or("us-east-1"),
                    code.unwrap_or_default()
                ),
                Some(other) => format!("access to S3 bucket {bucket} at {ep} denied ({} {other})", status.unwrap_or(0)),
                None => format!("access to S3 bucket {bucket} at {ep} denied (HTTP {})", status.unwrap_or(0)),
            }
        }
        (_, Some(301)) => {
            let region = err
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"))
                .unwrap_or("another region")
                .to_string();
            format!("S3 bucket {bucket} is in {region}, not the configured region: set s3.region or AWS_REGION")
        }
        (_, Some(s)) => format!("S3 endpoint {ep} answered HTTP {s} for bucket {bucket}"),
        (_, None) => format!("S3 endpoint {ep}: cannot check bucket {bucket}: {}", root_cause(&err)),
    };
    Err(Error::Store(c.redactor.text(&msg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_stripped() {
        assert_eq!(strip_userinfo("http://a:b@host:9000/x"), "http://host:9000/x");
        assert_eq!(strip_userinfo("https://host"), "https://host");
    }
}
