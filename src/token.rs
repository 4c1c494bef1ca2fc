//! The upstream access token: fetched from Entra ID with the client-credentials grant, cached,
//! refreshed ahead of expiry in the background, and refreshed by exactly one request however
//! many callers need it at once.
//!
//! A token request runs detached from the callers who need it: each waits at most `token.wait`
//! for it and then gets an error (the proxy answers 503 at once instead of holding the caller for
//! the token endpoint's timeout), while the request itself completes for the next caller. After a
//! failure no new request is made until a jittered, doubling backoff has passed, however many
//! callers ask: during it they get the failure at once, with the time until the next attempt.
//!
//! The client secret is read from its file on every token request, so rotating a mounted
//! Kubernetes Secret needs no restart. The secret and the token live in `secrecy` types: they are
//! never formatted, logged or exported; failures are reported with the endpoint's error code.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::{TokenConfig, TokenMode};

/// Why no token could be had. Carries the token endpoint's error code, never a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint refused the request: {code}: {description}")]
    Refused { code: String, description: String },
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("token endpoint answered HTTP {status} without a usable body")]
    BadAnswer { status: u16 },
    #[error("cannot read credential file {path}: {reason}")]
    Credential { path: String, reason: String },
    /// A recent token request failed; the next one is not due yet.
    #[error("the last token request failed ({code}); the next attempt is due in {}", humantime::format_duration(*.retry_after))]
    Backoff { retry_after: Duration, code: String },
    /// A token request is in flight but did not finish within `token.wait`.
    #[error("the token endpoint did not answer within {}", humantime::format_duration(*.waited))]
    Slow { waited: Duration },
}

impl TokenError {
    /// A short, bounded label for metrics.
    pub fn code(&self) -> String {
        match self {
            TokenError::Refused { code, .. } => code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect(),
            TokenError::Unreachable(_) => "unreachable".into(),
            TokenError::BadAnswer { .. } => "bad_answer".into(),
            TokenError::Credential { .. } => "credential".into(),
            TokenError::Backoff { .. } => "backoff".into(),
            TokenError::Slow { .. } => "slow".into(),
        }
    }

    /// When a caller refused for lack of a token should come back.
    pub fn retry_after(&self) -> Duration {
        match self {
            TokenError::Backoff { retry_after, .. } => *retry_after,
            _ => Duration::from_secs(1),
        }
    }
}

/// A token with the generation it was issued in (for refresh-after-401).
#[derive(Clone)]
pub struct Token {
    pub secret: SecretString,
    pub generation: u64,
    /// Not to be sent after this (it could expire on the way).
    pub usable_until: Instant,
}

impl Token {
    pub fn usable(&self, now: Instant) -> bool {
        self.usable_until > now
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(generation {}, [redacted])", self.generation)
    }
}

/// Where upstream tokens come from.
pub enum TokenSource {
    /// A fixed token from config (tests and special set-ups).
    Static(SecretString),
    /// Entra ID client credentials.
    Broker(Arc<Broker>),
}

impl TokenSource {
    pub fn from_config(config: &TokenConfig) -> Result<TokenSource, TokenError> {
        match config.mode {
            TokenMode::Static => {
                let secret = match (&config.static_token, &config.static_token_file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(path)) => read_secret_file(path)?,
                    (None, None) => SecretString::from(String::new()),
                };
                Ok(TokenSource::Static(secret))
            }
            TokenMode::ClientCredentials => Ok(TokenSource::Broker(Arc::new(Broker::new(config)?))),
        }
    }

    pub async fn token(&self) -> Result<Token, TokenError> {
        match self {
            TokenSource::Static(s) => Ok(Token {
                secret: s.clone(),
                generation: 0,
                usable_until: Instant::now() + Duration::from_secs(365 * 24 * 3600),
            }),
            TokenSource::Broker(b) => b.token().await,
        }
    }

    /// The token at hand, if any, without asking the token endpoint.
    pub fn cached(&self) -> Option<Token> {
        match self {
            TokenSource::Static(_) => None,
            TokenSource::Broker(b) => b.valid(),
        }
    }

    /// The upstream rejected `rejected` with 401: get a new one, unless someone already did.
    pub async fn refresh_after_rejection(&self, rejected: &Token) -> Result<Token, TokenError> {
        match self {
            TokenSource::Static(_) => self.token().await,
            TokenSource::Broker(b) => b.refresh_if(rejected.generation).await,
        }
    }

    /// Whether a valid token is at hand (readiness).
    pub fn ready(&self) -> bool {
        match self {
            TokenSource::Static(_) => true,
            TokenSource::Broker(b) => b.has_valid_token(),
        }
    }

    /// Unix time at which the current token expires (metrics).
    pub fn expires_at_unix(&self) -> Option<u64> {
        match self {
            TokenSource::Static(_) => None,
            TokenSource::Broker(b) => b.current.read().as_ref().map(|c| c.expires_unix),
        }
    }

    /// Failed token requests so far, by error code (metrics).
    pub fn failures(&self) -> BTreeMap<String, u64> {
        match self {
            TokenSource::Static(_) => BTreeMap::new(),
            TokenSource::Broker(b) => b.failures.lock().clone(),
        }
    }

    /// Keeps the token fresh in the background until the returned handle is aborted.
    pub fn spawn_refresher(&self) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            TokenSource::Static(_) => None,
            TokenSource::Broker(b) => Some(tokio::spawn(b.clone().refresh_loop())),
        }
    }
}

enum Credential {
    Secret(SecretString),
    SecretFile(PathBuf),
    Certificate { key_file: PathBuf, thumbprint: String },
}

struct Cached {
    token: SecretString,
    generation: u64,
    /// When the background task renews it: `refresh_before` ahead of expiry, but never in the
    /// first half of the token's life (a short-lived token must not cause a refresh loop).
    refresh_at: Instant,
    /// Not handed out after this: it could expire on the way to the upstream.
    usable_until: Instant,
    expires_unix: u64,
}

/// Client-credentials token broker.
pub struct Broker {
    http: reqwest::Client,
    endpoint: String,
    client_id: String,
    scope: String,
    credential: Credential,
    refresh_before: Duration,
    /// How long a caller waits for a token request in flight.
    wait: Duration,
    current: RwLock<Option<Cached>>,
    /// The one token request in flight, shared by everyone who needs it.
    inflight: Mutex<Option<TokenFetch>>,
    backoff: Mutex<Backoff>,
    failures: Mutex<BTreeMap<String, u64>>,
}

/// A token request as everyone waiting for it sees it.
type TokenFetch = Shared<BoxFuture<'static, Result<Token, TokenError>>>;

/// After a failed token request: no new one before `until`.
struct Backoff {
    until: Option<Instant>,
    step: Duration,
    last_code: String,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A token is not handed out in its last 30 s (or last quarter of a short life).
const EXPIRY_SKEW: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(deserialize_with = "seconds")]
    expires_in: u64,
}

/// `expires_in` is a number in the v2.0 endpoint's answers, a string in some older ones.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Number(u64),
        Text(String),
    }
    match Secs::deserialize(d)? {
        Secs::Number(n) => Ok(n),
        Secs::Text(t) => t.trim().parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
struct TokenFailure {
    error: String,
    #[serde(default)]
    error_description: String,
}

fn read_secret_file(path: &PathBuf) -> Result<SecretString, TokenError> {
    std::fs::read_to_string(path)
        .map(|s| SecretString::from(s.trim().to_string()))
        .map_err(|e| TokenError::Credential {
            path: path.display().to_string(),
            reason: e.kind().to_string(),
        })
}

impl Broker {
    fn new(config: &TokenConfig) -> Result<Broker, TokenError> {
        let credential = if let Some(key_file) = &config.client_certificate_key_file {
            Credential::Certificate {
                key_file: key_file.clone(),
                thumbprint: config.client_certificate_thumbprint.clone().unwrap_or_default(),
            }
        } else if let Some(s) = &config.client_secret {
            Credential::Secret(s.clone())
        } else if let Some(p) = &config.client_secret_file {
            Credential::SecretFile(p.clone())
        } else {
            return Err(TokenError::Credential {
                path: "token.client_secret".into(),
                reason: "not configured".into(),
            });
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| TokenError::Unreachable(e.to_string()))?;
        Ok(Broker {
            http,
            endpoint: format!(
                "{}/{}/oauth2/v2.0/token",
                config.authority.trim_end_matches('/'),
                config.tenant_id.trim()
            ),
            client_id: config.client_id.clone(),
            scope: format!("{}/.default", config.resource.trim_end_matches('/')),
            credential,
            refresh_before: config.refresh_before,
            wait: config.wait,
            current: RwLock::new(None),
            inflight: Mutex::new(None),
            backoff: Mutex::new(Backoff {
                until: None,
                step: FIRST_BACKOFF,
                last_code: String::new(),
            }),
            failures: Mutex::new(BTreeMap::new()),
        })
    }

    fn valid(&self) -> Option<Token> {
        let now = Instant::now();
        self.current
            .read()
            .as_ref()
            .filter(|c| c.usable_until > now)
            .map(|c| Token {
                secret: c.token.clone(),
                generation: c.generation,
                usable_until: c.usable_until,
            })
    }

    fn has_valid_token(&self) -> bool {
        self.valid().is_some()
    }

    /// The failure to report while a backoff runs.
    fn backing_off(&self, now: Instant) -> Option<TokenError> {
        let b = self.backoff.lock();
        b.until.filter(|&u| u > now).map(|u| TokenError::Backoff {
            retry_after: u - now,
            code: b.last_code.clone(),
        })
    }

    async fn token(self: &Arc<Self>) -> Result<Token, TokenError> {
        if let Some(t) = self.valid() {
            return Ok(t);
        }
        if let Some(e) = self.backing_off(Instant::now()) {
            return Err(e);
        }
        match tokio::time::timeout(self.wait, self.join_or_start_fetch()).await {
            Ok(result) => result,
            Err(_) => Err(TokenError::Slow { waited: self.wait }),
        }
    }

    async fn refresh_if(self: &Arc<Self>, rejected_generation: u64) -> Result<Token, TokenError> {
        {
            let mut current = self.current.write();
            match current.as_mut() {
                // Someone already replaced the rejected token.
                Some(c) if c.generation != rejected_generation => {}
                // The upstream refused it: nobody may use it any more.
                Some(c) => c.usable_until = Instant::now(),
                None => {}
            }
        }
        self.token().await
    }

    /// The token request in flight, or a new one. It runs as its own task, so a caller that stops
    /// waiting does not cancel it.
    fn join_or_start_fetch(self: &Arc<Self>) -> TokenFetch {
        let mut inflight = self.inflight.lock();
        if let Some(f) = inflight.as_ref().filter(|f| f.peek().is_none()) {
            return f.clone();
        }
        let this = self.clone();
        let task = tokio::spawn(async move { this.fetch().await });
        let shared = async move {
            task.await
                .unwrap_or_else(|_| Err(TokenError::Unreachable("the token request task ended".into())))
        }
        .boxed()
        .shared();
        *inflight = Some(shared.clone());
        shared
    }

    /// One token request; its outcome sets or clears the backoff.
    async fn fetch(&self) -> Result<Token, TokenError> {
        let result = self.request().await;
        let mut backoff = self.backoff.lock();
        match &result {
            Ok(t) => {
                backoff.until = None;
                backoff.step = FIRST_BACKOFF;
                tracing::info!(generation = t.generation, "upstream token obtained");
            }
            Err(e) => {
                *self.failures.lock().entry(e.code()).or_default() += 1;
                let jitter = rand::thread_rng().gen_range(0.8..1.2);
                let pause = backoff.step.mul_f64(jitter);
                backoff.until = Some(Instant::now() + pause);
                backoff.step = (backoff.step * 2).min(MAX_BACKOFF);
                backoff.last_code = e.code();
                tracing::warn!(
                    error.code = %e.code(), error = %e, retry_in_secs = pause.as_secs_f64(),
                    "upstream token request failed"
                );
            }
        }
        result
    }

    async fn request(&self) -> Result<Token, TokenError> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.expose_secret().to_string())),
            Credential::SecretFile(p) => form.push(("client_secret", read_secret_file(p)?.expose_secret().to_string())),
            Credential::Certificate { key_file, thumbprint } => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", self.client_assertion(key_file, thumbprint)?));
            }
        }
        let resp = self
            .http
            .post(&self.endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Unreachable(without_url(e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| TokenError::Unreachable(without_url(e)))?;
        if status != 200 {
            return Err(match serde_json::from_slice::<TokenFailure>(&body) {
                Ok(f) => TokenError::Refused {
                    code: f.error,
                    // The first line is the human part ("AADSTS7000215: Invalid client secret ...").
                    description: f
                        .error_description
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect(),
                },
                Err(_) => TokenError::BadAnswer { status },
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| TokenError::BadAnswer { status })?;
        // A day at most: a nonsense lifetime must not overflow the clock or pin a token forever.
        let lifetime = Duration::from_secs(answer.expires_in.min(24 * 3600));
        let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut current = self.current.write();
        let generation = current.as_ref().map_or(1, |c| c.generation + 1);
        let secret = SecretString::from(answer.access_token);
        let now = Instant::now();
        *current = Some(Cached {
            token: secret.clone(),
            generation,
            refresh_at: now + lifetime - self.refresh_before.min(lifetime / 2),
            usable_until: now + lifetime - EXPIRY_SKEW.min(lifetime / 4),
            expires_unix: (unix_now + lifetime).as_secs(),
        });
        Ok(Token {
            secret,
            generation,
            usable_until: now + lifetime - EXPIRY_SKEW.min(lifetime / 4),
        })
    }

    /// A JWT client assertion signed with the certificate's private key (RS256, `x5t` header).
    fn client_assertion(&self, key_file: &PathBuf, thumbprint: &str) -> Result<String, TokenError> {
        use base64::Engine;
        let cred_err = |reason: String| TokenError::Credential {
            path: key_file.display().to_string(),
            reason,
        };
        let pem = std::fs::read(key_file).map_err(|e| cred_err(e.kind().to_string()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
            .map_err(|_| cred_err("not an RSA private key in PEM".into()))?;
        let thumb = hex::decode(thumbprint.trim()).map_err(|_| cred_err("thumbprint is not hex".into()))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumb));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = serde_json::json!({
            "aud": self.endpoint, "iss": self.client_id, "sub": self.client_id,
            "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now, "exp": now + 600,
        });
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| cred_err(e.to_string()))
    }

    /// Refreshes `refresh_before` ahead of expiry; after a failure, when the backoff is over.
    async fn refresh_loop(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let due = self.current.read().as_ref().map_or(now, |c| c.refresh_at);
            let retry = self.backoff.lock().until.unwrap_or(now);
            tokio::time::sleep_until(due.max(retry)).await;
            let now = Instant::now();
            let fresh_enough = self.current.read().as_ref().is_some_and(|c| c.refresh_at > now);
            if fresh_enough || self.backing_off(now).is_some() {
                continue;
            }
            let _ = self.join_or_start_fetch().await;
        }
    }
}

/// reqwest errors name the URL; ours holds no secret, but keep messages short and uniform.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_with_numeric_or_string_lifetimes() {
        let a: TokenAnswer =
            serde_json::from_str(r#"{"token_type":"Bearer","expires_in":3599,"access_token":"x"}"#).unwrap();
        assert_eq!(a.expires_in, 3599);
        let a: TokenAnswer = serde_json::from_str(r#"{"expires_in":"3599","access_token":"x"}"#).unwrap();
        assert_eq!(a.expires_in, 3599);
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token {
            secret: SecretString::from("very-secret-token".to_string()),
            generation: 3,
            usable_until: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
