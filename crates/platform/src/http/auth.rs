//! Bearer-token authentication of the mutating endpoints (orders-api's
//! mutations, analytics' dead-letter re-drive). Tokens come from
//! `API_TOKENS` (comma-separated) and/or `API_TOKENS_FILE` (a mounted
//! Secret, one token per line). With no token configured every mutation is
//! refused: an unconfigured service is closed, not open.

use std::sync::Arc;

use crate::http::Problem;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Where the accepted tokens come from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// Bearer tokens accepted on mutating endpoints, comma-separated.
    #[arg(
        long = "api-tokens",
        env = "API_TOKENS",
        default_value = "",
        hide_env_values = true
    )]
    pub api_tokens: String,
    /// A file with one accepted token per line (a mounted Secret).
    #[arg(long = "api-tokens-file", env = "API_TOKENS_FILE")]
    pub api_tokens_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    pub fn load(&self) -> anyhow::Result<Tokens> {
        Tokens::load(&self.api_tokens, self.api_tokens_file.as_deref())
    }
}

/// Who made an authenticated request: a fingerprint of the token (the first
/// 12 hex digits of its SHA-256), never the token itself. Handlers behind
/// [`require_token`] read it as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

impl Caller {
    pub fn of(token: &[u8]) -> Caller {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(token);
        Caller(format!("token:{}", &hex::encode(digest)[..12]))
    }
}

#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl Tokens {
    pub fn load(inline: &str, file: Option<&std::path::Path>) -> anyhow::Result<Tokens> {
        let mut tokens: Vec<Vec<u8>> = inline
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.as_bytes().to_vec())
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading API_TOKENS_FILE {}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| t.as_bytes().to_vec()),
            );
        }
        Ok(Tokens(Arc::new(tokens)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares against every token in constant time per token, without
    /// stopping at the first match.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, t| {
                found | t.as_slice().ct_eq(candidate)
            })
            .into()
    }
}

fn unauthorized(detail: &str) -> Response {
    let mut r = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Middleware: 401 without a bearer token, 403 with one that is not valid.
pub async fn require_token(State(tokens): State<Tokens>, mut req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return unauthorized("this endpoint requires Authorization: Bearer <token>");
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return unauthorized("the Authorization header must be 'Bearer <token>'");
    };
    if !tokens.accepts(token.as_bytes()) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is not valid for this API",
        )
        .into_response();
    }
    let caller = Caller::of(token.as_bytes());
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_env_and_file() {
        let dir = std::env::temp_dir().join(format!("tokens-{}", std::process::id()));
        std::fs::write(&dir, "file-token\n\n  second  \n").unwrap();
        let t = Tokens::load(" a , b,,", Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        for ok in ["a", "b", "file-token", "second"] {
            assert!(t.accepts(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "c", "file", "a ", "second\n"] {
            assert!(!t.accepts(bad.as_bytes()), "{bad:?}");
        }
        assert!(Tokens::load("", Some(std::path::Path::new("/nonexistent/tokens"))).is_err());
        assert!(Tokens::load("", None).unwrap().is_empty());
        let caller = Caller::of(b"a");
        assert_eq!(caller, Caller::of(b"a"));
        assert_ne!(caller, Caller::of(b"b"));
        assert!(
            caller.0.starts_with("token:") && caller.0.len() == 18,
            "{caller:?}"
        );
    }
}
