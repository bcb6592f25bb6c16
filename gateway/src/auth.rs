//! API keys: how they are stored, how a caller presents one, and how it is checked.
//!
//! The gateway keeps only SHA-256 digests of keys. A presented key is hashed and looked up
//! by digest; the final comparison is constant-time. Because the table is keyed by digests of
//! high-entropy secrets, lookup timing tells an attacker nothing about any stored key.
//! Keys never reach a log line, an error message or a run record.

use crate::error::GatewayError;
use crate::limits::CallerLimits;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use subtle::ConstantTimeEq;

/// A SHA-256 digest of an API key.
pub type KeyDigest = [u8; 32];

/// Whether a header or query parameter with this name may carry a credential. Providers and
/// tools invent their own names (`X-Gitlab-Token`, `PayPal-Transmission-Sig`,
/// `Ocp-Apim-Subscription-Key`, `Cf-Access-Jwt-Assertion`, ...), so names are judged by the
/// words in them. Erring toward "secret" only hides a value from a sample or keeps a header
/// from being passed on; erring the other way leaks it.
pub fn looks_secret(name: &str) -> bool {
    const WORDS: [&str; 14] = [
        "token",
        "secret",
        "sig",
        "pass",
        "pwd",
        "auth",
        "key",
        "hmac",
        "jwt",
        "credential",
        "session",
        "cookie",
        "otp",
        "private",
    ];
    let lower = name.to_ascii_lowercase();
    WORDS.iter().any(|word| lower.contains(word)) || lower == "code"
}

pub fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Who may call one workflow.
#[derive(Debug, Clone)]
pub enum KeyPolicy {
    /// Anyone who knows the URL.
    Open,
    /// A valid key; `allowed` names the keys that may call, or `None` for every key.
    /// `query_param` names a query parameter that may carry the key as well as the headers.
    Required {
        allowed: Option<HashSet<String>>,
        query_param: Option<String>,
    },
}

impl KeyPolicy {
    /// The query parameter that may carry a key, whose value must never be shown.
    pub fn query_param(&self) -> Option<&str> {
        match self {
            Self::Required { query_param, .. } => query_param.as_deref(),
            Self::Open => None,
        }
    }
}

/// One configured key, known by its name.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub name: String,
    pub limits: CallerLimits,
}

/// Every configured key, by digest.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<KeyDigest, ApiKey>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = (String, KeyDigest, CallerLimits)>) -> Self {
        Self {
            by_digest: keys
                .into_iter()
                .map(|(name, digest, limits)| (digest, ApiKey { name, limits }))
                .collect(),
        }
    }

    pub fn contains_name(&self, name: &str) -> bool {
        self.by_digest.values().any(|known| known.name == name)
    }

    /// Checks the caller against `policy`; returns the key used, if any.
    pub fn authenticate(
        &self,
        policy: &KeyPolicy,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<&ApiKey>, GatewayError> {
        let KeyPolicy::Required {
            allowed,
            query_param,
        } = policy
        else {
            return Ok(None);
        };
        let presented = match presented_key(headers, query_param.as_deref().zip(query)) {
            Presented::One(key) => key,
            Presented::None => return Err(GatewayError::Unauthorized("an api key is required")),
            Presented::Unusable => {
                return Err(GatewayError::Unauthorized("the api key is not valid"))
            }
        };

        let key = self
            .find(&presented)
            .ok_or(GatewayError::Unauthorized("the api key is not valid"))?;
        match allowed {
            Some(names) if !names.contains(&key.name) => Err(GatewayError::Unauthorized(
                "the api key is not valid for this workflow",
            )),
            _ => Ok(Some(key)),
        }
    }

    fn find(&self, presented: &str) -> Option<&ApiKey> {
        let wanted = digest(presented);
        let (stored, key) = self.by_digest.get_key_value(&wanted)?;
        bool::from(stored.ct_eq(&wanted)).then_some(key)
    }
}

/// What a caller presented as its key.
#[derive(Debug, PartialEq)]
pub enum Presented<'a> {
    None,
    One(Cow<'a, str>),
    /// Several different keys, or one that is not text: refused rather than guessed at.
    Unusable,
}

/// The key a caller sent, in `X-API-Key`, `Authorization: Bearer <key>`, or the query
/// parameter `from_query` names (with the raw query string). Empty values count as absent;
/// two different keys, or a key that is not ASCII text, are unusable.
pub fn presented_key<'a>(
    headers: &'a HeaderMap,
    from_query: Option<(&str, &str)>,
) -> Presented<'a> {
    let mut found: Option<Cow<'a, str>> = None;
    let from_header = headers
        .get_all("x-api-key")
        .iter()
        .map(|v| v.to_str().map(|text| Cow::Borrowed(text.trim())));
    let from_bearer = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| {
            v.to_str()
                .map(|text| Cow::Borrowed(bearer_token(text).unwrap_or("")))
        });
    let in_query: Vec<_> = from_query
        .map(|(name, query)| {
            form_urlencoded::parse(query.as_bytes())
                .filter(|(parameter, _)| parameter == name)
                .map(|(_, value)| Ok(Cow::Owned(value.trim().to_string())))
                .collect()
        })
        .unwrap_or_default();

    for candidate in from_header.chain(from_bearer).chain(in_query) {
        match candidate {
            Err(_) => return Presented::Unusable,
            Ok(key) if key.is_empty() => {}
            Ok(key) if found.as_ref().is_some_and(|first| *first != key) => {
                return Presented::Unusable
            }
            Ok(key) => found = Some(key),
        }
    }
    found.map_or(Presented::None, Presented::One)
}

fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Compares two secrets without leaking, through timing, where they first differ.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A new random API key, prefixed so that it is recognisable in a secret scanner.
pub fn generate_key() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("wgk_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> ApiKeys {
        ApiKeys::new([
            (
                "demo".to_string(),
                digest("demo-key-0001"),
                CallerLimits::default(),
            ),
            ("ci".to_string(), digest("ci-key"), CallerLimits::default()),
        ])
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn accepts_a_key_from_either_header() {
        let policy = KeyPolicy::Required {
            allowed: None,
            query_param: None,
        };
        let keys = keys();
        let by_header = keys.authenticate(&policy, &headers("x-api-key", "demo-key-0001"), None);
        assert_eq!(by_header.unwrap().unwrap().name, "demo");
        let by_bearer =
            keys.authenticate(&policy, &headers("authorization", "bearer ci-key"), None);
        assert_eq!(by_bearer.unwrap().unwrap().name, "ci");
    }

    #[test]
    fn refuses_missing_wrong_and_unlisted_keys() {
        let any = KeyPolicy::Required {
            allowed: None,
            query_param: None,
        };
        assert!(keys().authenticate(&any, &HeaderMap::new(), None).is_err());
        assert!(keys()
            .authenticate(&any, &headers("x-api-key", "nope"), None)
            .is_err());
        assert!(keys()
            .authenticate(&any, &headers("authorization", "Basic ci-key"), None)
            .is_err());

        let only_ci = KeyPolicy::Required {
            allowed: Some(HashSet::from(["ci".to_string()])),
            query_param: None,
        };
        assert!(keys()
            .authenticate(&only_ci, &headers("x-api-key", "demo-key-0001"), None)
            .is_err());
    }

    #[test]
    fn conflicting_or_empty_key_headers_are_handled_without_guessing() {
        let mut two = HeaderMap::new();
        two.append("x-api-key", HeaderValue::from_static("demo-key-0001"));
        two.append("x-api-key", HeaderValue::from_static("wrong"));
        assert_eq!(presented_key(&two, None), Presented::Unusable);

        let mut empty_then_bearer = HeaderMap::new();
        empty_then_bearer.append("x-api-key", HeaderValue::from_static(""));
        empty_then_bearer.append("authorization", HeaderValue::from_static("Bearer ci-key"));
        assert_eq!(
            presented_key(&empty_then_bearer, None),
            Presented::One("ci-key".into())
        );

        let mut same_twice = HeaderMap::new();
        same_twice.append("x-api-key", HeaderValue::from_static("ci-key"));
        same_twice.append("authorization", HeaderValue::from_static("Bearer ci-key"));
        assert_eq!(
            presented_key(&same_twice, None),
            Presented::One("ci-key".into())
        );
    }

    #[test]
    fn a_key_in_the_named_query_parameter_counts_and_must_agree_with_headers() {
        let policy = KeyPolicy::Required {
            allowed: None,
            query_param: Some("token".into()),
        };
        let none = HeaderMap::new();
        let keys = keys();
        let found = keys.authenticate(&policy, &none, Some("a=1&token=ci%2Dkey"));
        assert_eq!(found.unwrap().unwrap().name, "ci");
        assert!(keys
            .authenticate(&policy, &none, Some("other=ci-key"))
            .is_err());
        let conflicting = headers("x-api-key", "demo-key-0001");
        assert_eq!(
            presented_key(&conflicting, Some(("token", "token=ci-key"))),
            Presented::Unusable
        );
    }

    #[test]
    fn open_policy_needs_no_key() {
        assert_eq!(
            keys()
                .authenticate(&KeyPolicy::Open, &HeaderMap::new(), None)
                .unwrap(),
            None
        );
    }
}
