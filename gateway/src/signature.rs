//! Webhook signatures: the sender signs the exact bytes it sends with a shared secret, and the
//! gateway checks that MAC over the exact bytes received, before anything parses them.
//!
//! Presets cover the schemes of GitHub, Stripe, Shopify, Slack, Meta, Twilio and Standard
//! Webhooks (which Svix also speaks); `hmac` describes any other HMAC scheme (algorithm,
//! encoding, header, prefix, and whether a timestamp is signed too). Twilio signs the URL it
//! called rather than the body alone, so the check is given the public URL of the request.
//! Several secrets may be configured at once, so a secret can be rotated without downtime,
//! and a header may carry several signatures (Stripe during its own rotation). MACs are
//! compared in constant time. A workflow whose secret is missing refuses every request.

use crate::error::GatewayError;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Tolerance for signed timestamps when the workflow sets none: Stripe's and Slack's.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The environment variable that fixes the clock signatures are checked against, in Unix
/// seconds. For tests of timestamped schemes only.
pub const CLOCK_ENV: &str = "WEBHOOK_GATEWAY_SIGNATURE_CLOCK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// What the MAC is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// The body as received.
    Body,
    /// `<before><timestamp><between><body>`: Stripe (`""`, `"."`), Slack (`"v0:"`, `":"`).
    TimestampAndBody {
        before: &'static str,
        between: &'static str,
    },
    /// `<message id>.<timestamp>.<body>`: Standard Webhooks.
    IdTimestampAndBody,
    /// Twilio: the URL called, followed by each form parameter's name and value sorted by
    /// name; for any other body, the URL alone, whose `bodySHA256` parameter is the body's
    /// SHA-256 in hex.
    UrlAndParameters,
}

/// Where a scheme finds its signatures and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A header holding one or more signatures (separated by commas or spaces), each after
    /// an optional prefix; an optional timestamp header.
    Header {
        name: String,
        prefix: String,
        timestamp_header: Option<String>,
    },
    /// Stripe's `t=<timestamp>,v1=<signature>[,v1=...]` in one header; only `v1` counts.
    Stripe,
    /// `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64> [v1,...]`, or the
    /// same under `svix-` names.
    StandardWebhooks,
}

/// How a sender signs: which MAC, how it is written, where it is, and over what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    pub name: &'static str,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub layout: Layout,
    pub signed: Signed,
}

impl Scheme {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body.
    pub fn github() -> Self {
        Self {
            name: "github",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            layout: Layout::Header {
                name: "x-hub-signature-256".into(),
                prefix: "sha256=".into(),
                timestamp_header: None,
            },
            signed: Signed::Body,
        }
    }

    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>` over the body.
    pub fn shopify() -> Self {
        Self {
            name: "shopify",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            layout: Layout::Header {
                name: "x-shopify-hmac-sha256".into(),
                prefix: String::new(),
                timestamp_header: None,
            },
            signed: Signed::Body,
        }
    }

    /// Slack: `X-Slack-Signature: v0=<hex>` over `v0:<timestamp>:<body>`.
    pub fn slack() -> Self {
        Self {
            name: "slack",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            layout: Layout::Header {
                name: "x-slack-signature".into(),
                prefix: "v0=".into(),
                timestamp_header: Some("x-slack-request-timestamp".into()),
            },
            signed: Signed::TimestampAndBody {
                before: "v0:",
                between: ":",
            },
        }
    }

    /// Stripe: `Stripe-Signature: t=..,v1=..` over `<timestamp>.<body>`.
    pub fn stripe() -> Self {
        Self {
            name: "stripe",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            layout: Layout::Stripe,
            signed: Signed::TimestampAndBody {
                before: "",
                between: ".",
            },
        }
    }
}

impl Scheme {
    /// Standard Webhooks: `v1,<base64>` over `<id>.<timestamp>.<body>`, keyed by the
    /// base64-decoded secret.
    pub fn standard_webhooks() -> Self {
        Self {
            name: "standard_webhooks",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            layout: Layout::StandardWebhooks,
            signed: Signed::IdTimestampAndBody,
        }
    }

    /// Twilio: `X-Twilio-Signature: <base64>`, HMAC-SHA1 over the URL and form parameters.
    pub fn twilio() -> Self {
        Self {
            name: "twilio",
            algorithm: Algorithm::Sha1,
            encoding: Encoding::Base64,
            layout: Layout::Header {
                name: "x-twilio-signature".into(),
                prefix: String::new(),
                timestamp_header: None,
            },
            signed: Signed::UrlAndParameters,
        }
    }

    /// Whether the scheme signs a timestamp, so that a tolerance applies.
    pub fn signs_a_timestamp(&self) -> bool {
        !matches!(self.signed, Signed::Body | Signed::UrlAndParameters)
    }
}

/// What a signature is checked against.
pub struct SignedRequest<'a> {
    pub headers: &'a HeaderMap,
    /// The body exactly as received, before any content coding is undone.
    pub body: &'a [u8],
    /// The URL the sender called, as the sender saw it (scheme, host, path and query). Only
    /// Twilio signs it.
    pub url: &'a str,
}

/// What a request presents: its signatures and what it says was signed with them.
struct Presented {
    /// The message id Standard Webhooks signs.
    id: Option<String>,
    timestamp: Option<String>,
    signatures: Vec<String>,
}

/// One workflow's signature check, validated.
#[derive(Clone)]
pub struct SignatureCheck {
    pub scheme: Scheme,
    pub tolerance: Duration,
    /// Empty when the configured secret is missing: every request is refused.
    secrets: Vec<Vec<u8>>,
    /// Meta's subscription handshake: the token its `GET ?hub.verify_token=` must carry.
    pub verify_token: Option<String>,
}

impl std::fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCheck")
            .field("scheme", &self.scheme.name)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Why a request's signature does not hold.
fn refused(reason: &'static str) -> GatewayError {
    GatewayError::InvalidSignature(reason)
}

impl SignatureCheck {
    /// Blank secrets (empty, or only spaces: an unset variable in the file) are dropped; with
    /// none left, every request is refused.
    pub fn new(scheme: Scheme, tolerance: Duration, secrets: Vec<String>) -> Self {
        let secrets = secrets
            .into_iter()
            .filter(|secret| !secret.trim().is_empty())
            .map(String::into_bytes)
            .collect();
        Self {
            scheme,
            tolerance,
            secrets,
            verify_token: None,
        }
    }

    /// Meta (WhatsApp, Instagram, Messenger): GitHub's header and MAC, plus the verify token
    /// of its subscription handshake.
    pub fn meta(secrets: Vec<String>, verify_token: Option<String>) -> Self {
        let scheme = Scheme {
            name: "meta",
            ..Scheme::github()
        };
        let mut check = Self::new(scheme, DEFAULT_TOLERANCE, secrets);
        check.verify_token = verify_token.filter(|token| !token.is_empty());
        check
    }

    /// Standard Webhooks: secrets are written `whsec_<base64>`, and the MAC key is the
    /// decoded bytes. A secret that does not decode is reported, with its position.
    pub fn standard_webhooks(
        secrets: Vec<String>,
        tolerance: Duration,
    ) -> Result<Self, (usize, String)> {
        let mut check = Self::new(Scheme::standard_webhooks(), tolerance, Vec::new());
        for (position, secret) in secrets.iter().enumerate() {
            let encoded = secret.trim();
            let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
            // `whsec_` alone is what `whsec_${UNSET}` leaves: no key, so it keys nothing.
            if encoded.is_empty() {
                continue;
            }
            let key = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| (position, "is not `whsec_` followed by base64".to_string()))?;
            check.secrets.push(key);
        }
        Ok(check)
    }

    /// Checks the request's signature at time `now`.
    /// Whether a secret is configured at all; without one every request is refused.
    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    pub fn verify(&self, request: &SignedRequest<'_>, now: SystemTime) -> Result<(), GatewayError> {
        if self.secrets.is_empty() {
            return Err(refused("no signing secret is configured for this workflow"));
        }
        let presented = self.presented(request.headers)?;
        if let Some(timestamp) = &presented.timestamp {
            self.check_freshness(timestamp, now)?;
        }
        let messages = self.messages(&presented, request)?;

        let matched = presented.signatures.iter().any(|signature| {
            self.decode(signature).is_some_and(|mac| {
                messages
                    .iter()
                    .any(|message| self.matches_a_secret(message, &mac))
            })
        });
        if matched {
            Ok(())
        } else {
            Err(refused("the signature does not match"))
        }
    }

    /// The signatures the request presents, and the id and timestamp signed with them.
    fn presented(&self, headers: &HeaderMap) -> Result<Presented, GatewayError> {
        let header_text = |name: &str| header_text(headers, name);
        let signatures_in = |value: &str, prefix: &str| -> Vec<String> {
            value
                .split([',', ' '])
                .filter_map(|part| part.trim().strip_prefix(prefix))
                .filter(|signature| !signature.is_empty())
                .map(str::to_string)
                .collect()
        };

        match &self.scheme.layout {
            Layout::Header {
                name,
                prefix,
                timestamp_header,
            } => {
                let value = header_text(name)?.ok_or(refused("the signature header is missing"))?;
                let timestamp = match timestamp_header {
                    Some(name) => {
                        Some(header_text(name)?.ok_or(refused("the timestamp header is missing"))?)
                    }
                    None => None,
                };
                Ok(Presented {
                    id: None,
                    timestamp,
                    signatures: signatures_in(&value, prefix),
                })
            }
            Layout::Stripe => {
                let value = header_text("stripe-signature")?
                    .ok_or(refused("the signature header is missing"))?;
                parse_stripe(&value)
            }
            Layout::StandardWebhooks => {
                // Svix sends the same scheme under its own header names.
                let family = if headers.contains_key("webhook-signature") {
                    "webhook"
                } else {
                    "svix"
                };
                let named = |part: &str| header_text(&format!("{family}-{part}"));
                let value =
                    named("signature")?.ok_or(refused("the signature header is missing"))?;
                let id = named("id")?.ok_or(refused("the webhook-id header is missing"))?;
                let timestamp =
                    named("timestamp")?.ok_or(refused("the timestamp header is missing"))?;
                // Entries are `<version>,<signature>`, separated by spaces; only v1 is HMAC.
                let signatures = value
                    .split_whitespace()
                    .filter_map(|entry| entry.strip_prefix("v1,"))
                    .map(str::to_string)
                    .collect();
                Ok(Presented {
                    id: Some(id),
                    timestamp: Some(timestamp),
                    signatures,
                })
            }
        }
    }

    fn check_freshness(&self, timestamp: &str, now: SystemTime) -> Result<(), GatewayError> {
        let signed_at = timestamp
            .parse::<u64>()
            .map_err(|_| refused("the signed timestamp is not a number of seconds"))?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        if now.abs_diff(signed_at) > self.tolerance.as_secs() {
            return Err(refused("the signed timestamp is outside the tolerance"));
        }
        Ok(())
    }

    /// What the sender signed; for Twilio, the URL written with and without its default
    /// port, since Twilio's own libraries accept either.
    fn messages(
        &self,
        presented: &Presented,
        request: &SignedRequest<'_>,
    ) -> Result<Vec<Vec<u8>>, GatewayError> {
        let timestamp = presented.timestamp.as_deref().unwrap_or_default();
        let joined = |parts: &[&[u8]]| parts.concat();
        Ok(match &self.scheme.signed {
            Signed::Body => vec![request.body.to_vec()],
            Signed::TimestampAndBody { before, between } => vec![joined(&[
                before.as_bytes(),
                timestamp.as_bytes(),
                between.as_bytes(),
                request.body,
            ])],
            Signed::IdTimestampAndBody => {
                let id = presented.id.as_deref().unwrap_or_default();
                vec![joined(&[
                    id.as_bytes(),
                    b".",
                    timestamp.as_bytes(),
                    b".",
                    request.body,
                ])]
            }
            Signed::UrlAndParameters => twilio_messages(request)?,
        })
    }

    fn decode(&self, signature: &str) -> Option<Vec<u8>> {
        match self.scheme.encoding {
            Encoding::Hex => hex::decode(signature.to_ascii_lowercase()).ok(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(signature)
                .ok(),
        }
    }

    /// Whether `presented` is the MAC of `message` under any configured secret, compared in
    /// constant time.
    fn matches_a_secret(&self, message: &[u8], presented: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|secret| match self.scheme.algorithm {
                Algorithm::Sha1 => verify_mac::<Hmac<sha1::Sha1>>(secret, message, presented),
                Algorithm::Sha256 => verify_mac::<Hmac<sha2::Sha256>>(secret, message, presented),
                Algorithm::Sha512 => verify_mac::<Hmac<sha2::Sha512>>(secret, message, presented),
            })
    }
}

fn verify_mac<M: Mac + hmac::digest::KeyInit>(
    secret: &[u8],
    message: &[u8],
    presented: &[u8],
) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(presented).is_ok()
}

/// One header's value, trimmed; refused when it is given twice or is not text.
fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(refused("a signature header is given twice"));
    }
    let text = value
        .to_str()
        .map_err(|_| refused("a signature header is not text"))?;
    Ok(Some(text.trim().to_string()))
}

/// Twilio's signed text, for each way of writing the URL's port.
fn twilio_messages(request: &SignedRequest<'_>) -> Result<Vec<Vec<u8>>, GatewayError> {
    let is_form = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });

    let suffix = if is_form {
        let mut parameters: Vec<(String, String)> =
            form_urlencoded::parse(request.body).into_owned().collect();
        parameters.sort();
        parameters
            .into_iter()
            .flat_map(|(name, value)| [name, value])
            .collect::<String>()
    } else {
        check_body_digest(request)?;
        String::new()
    };
    Ok(url_spellings(request.url)
        .into_iter()
        .map(|url| format!("{url}{suffix}").into_bytes())
        .collect())
}

/// A body Twilio does not send as a form is signed through its digest in the URL's
/// `bodySHA256` parameter, which must then match the body received.
fn check_body_digest(request: &SignedRequest<'_>) -> Result<(), GatewayError> {
    let query = request.url.split_once('?').map_or("", |(_, query)| query);
    let declared = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "bodySHA256")
        .map(|(_, value)| value.to_ascii_lowercase())
        .ok_or(refused(
            "the url has no bodySHA256 for a body that is not a form",
        ))?;
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(request.body));
    if crate::auth::secrets_equal(declared.as_bytes(), actual.as_bytes()) {
        Ok(())
    } else {
        Err(refused("the body does not match the url's bodySHA256"))
    }
}

/// `url` as given, plus the same with its scheme's default port added or removed.
fn url_spellings(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return vec![url.to_string()],
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let other = match authority.strip_suffix(default_port) {
        Some(bare) => format!("{scheme}://{bare}{tail}"),
        None if !authority.contains(':') || authority.ends_with(']') => {
            format!("{scheme}://{authority}{default_port}{tail}")
        }
        None => return vec![url.to_string()],
    };
    vec![url.to_string(), other]
}

/// `t=<timestamp>,v1=<hex>,v1=<hex>,v0=<hex>`: the timestamp and the `v1` signatures.
fn parse_stripe(value: &str) -> Result<Presented, GatewayError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", at)) if timestamp.is_none() => timestamp = Some(at.to_string()),
            Some(("t", _)) => return Err(refused("the signature header gives two timestamps")),
            Some(("v1", signature)) => signatures.push(signature.to_string()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(refused("the signature header has no timestamp"))?;
    Ok(Presented {
        id: None,
        timestamp: Some(timestamp),
        signatures,
    })
}

/// The time signatures are checked against: the system clock, or [`CLOCK_ENV`] when set.
pub fn now() -> SystemTime {
    static FIXED: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let fixed = FIXED.get_or_init(|| {
        std::env::var(CLOCK_ENV)
            .ok()
            .and_then(|seconds| seconds.trim().parse().ok())
    });
    match fixed {
        Some(seconds) => UNIX_EPOCH + Duration::from_secs(*seconds),
        None => SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(
        check: &SignatureCheck,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), GatewayError> {
        let request = SignedRequest {
            headers,
            body,
            url: "https://hooks.example.com/hooks/x",
        };
        check.verify(&request, now)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn githubs_documented_vector_verifies_and_a_changed_byte_does_not() {
        let check = SignatureCheck::new(
            Scheme::github(),
            DEFAULT_TOLERANCE,
            vec!["It's a Secret to Everybody".into()],
        );
        let signed = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert!(verify(&check, &signed, b"Hello, World!", now()).is_ok());
        assert!(verify(&check, &signed, b"Hello, World?", now()).is_err());
        assert!(verify(&check, &HeaderMap::new(), b"Hello, World!", now()).is_err());
    }

    #[test]
    fn stripe_takes_any_v1_within_the_tolerance_and_never_v0() {
        let check = SignatureCheck::new(
            Scheme::stripe(),
            DEFAULT_TOLERANCE,
            vec!["whsec_test_secret".into()],
        );
        let body = br#"{"id":"evt_test_1","object":"event","type":"payment_intent.succeeded"}"#;
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let old = "16aefa73878372c037f147c10813a519e6a72ba4d9e4f3ef790e9a49cca4b538";
        let good = "871acfe933554b446cc41d791076dd56a10c0553cc61aafbeb881d0082b45043";
        let v0 = "6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";

        for value in [
            format!("t=1700000000,v1={old},v1={good},v0={v0}"),
            format!("t=1700000000,v1={good},v1={old}"),
        ] {
            let signed = headers(&[("stripe-signature", &value)]);
            assert!(verify(&check, &signed, body, at).is_ok(), "{value}");
        }
        let only_v0 = headers(&[("stripe-signature", &format!("t=1700000000,v0={v0}"))]);
        assert!(verify(&check, &only_v0, body, at).is_err());
        let late = UNIX_EPOCH + Duration::from_secs(1_700_000_401);
        let signed = headers(&[("stripe-signature", &format!("t=1700000000,v1={good}"))]);
        assert!(verify(&check, &signed, body, late).is_err());
    }

    #[test]
    fn shopify_wants_base64_and_rotation_accepts_either_secret() {
        let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
        let check = SignatureCheck::new(
            Scheme::shopify(),
            DEFAULT_TOLERANCE,
            vec!["old-secret".into(), "shpss_test_secret".into()],
        );
        let base64 = headers(&[(
            "x-shopify-hmac-sha256",
            "LnwdZPLBbdjkBwPD/lDL1/rYEGby/GHPtL1aAH6Dxjc=",
        )]);
        assert!(verify(&check, &base64, body, now()).is_ok());
        let hex = headers(&[(
            "x-shopify-hmac-sha256",
            "2e7c1d64f2c16dd8e40703c3fe50cbd7fad81066f2fc61cfb4bd5a007e83c637",
        )]);
        assert!(verify(&check, &hex, body, now()).is_err());
    }

    #[test]
    fn slack_signs_version_timestamp_and_body() {
        let check = SignatureCheck::new(
            Scheme::slack(),
            DEFAULT_TOLERANCE,
            vec!["slack_test_secret".into()],
        );
        let body = b"token=x&command=%2Fdeploy&text=a%2Ab+c%2B1&user_name=jane.doe";
        let signed = headers(&[
            ("x-slack-request-timestamp", "1700000000"),
            (
                "x-slack-signature",
                "v0=70cc4788596e224fc70dfee49da150c9557b58366568e035b6bcd3c79ca75786",
            ),
        ]);
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        assert!(verify(&check, &signed, body, at).is_ok());
        let much_later = UNIX_EPOCH + Duration::from_secs(1_700_001_000);
        assert!(verify(&check, &signed, body, much_later).is_err());
    }

    #[test]
    fn a_missing_secret_refuses_everything() {
        let check = SignatureCheck::new(Scheme::github(), DEFAULT_TOLERANCE, vec![String::new()]);
        let signed = headers(&[(
            "x-hub-signature-256",
            "sha256=f7f9bd47fb987337b5796fdc1fdb9ba221d0d5396814bfcaf9521f43fd8927fd",
        )]);
        assert!(verify(&check, &signed, b"", now()).is_err());
        let configured = SignatureCheck::new(
            Scheme::github(),
            DEFAULT_TOLERANCE,
            vec!["test_secret".into()],
        );
        assert!(
            verify(&configured, &signed, b"", now()).is_ok(),
            "an empty body verifies"
        );
    }

    #[test]
    fn standard_webhooks_signs_id_timestamp_and_body_with_the_decoded_secret() {
        let check = SignatureCheck::standard_webhooks(
            vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            DEFAULT_TOLERANCE,
        )
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let at = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        for family in ["webhook", "svix"] {
            let signed = headers(&[
                (
                    &format!("{family}-id") as &str,
                    "msg_p5jXN8AQM9LWM0D4loKWxJek",
                ),
                (&format!("{family}-timestamp"), "1614265330"),
                (
                    &format!("{family}-signature"),
                    "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                ),
            ]);
            assert!(verify(&check, &signed, body, at).is_ok(), "{family}");
            assert!(verify(&check, &signed, b"{}", at).is_err());
            let late = at + Duration::from_secs(301);
            assert!(verify(&check, &signed, body, late).is_err());
        }
        assert!(
            SignatureCheck::standard_webhooks(vec!["whsec_!!".into()], DEFAULT_TOLERANCE).is_err()
        );
    }

    #[test]
    fn twilio_signs_the_url_and_the_sorted_form_parameters() {
        let check = SignatureCheck::new(Scheme::twilio(), DEFAULT_TOLERANCE, vec!["12345".into()]);
        let body = b"To=%2B18005551212&From=%2B12349013030&Digits=1234&Caller=%2B12349013030&CallSid=CA1234567890ABCDE";
        let signed = headers(&[
            ("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        for url in [
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        ] {
            let request = SignedRequest {
                headers: &signed,
                body,
                url,
            };
            assert!(check.verify(&request, now()).is_ok(), "{url}");
        }
        let elsewhere = SignedRequest {
            headers: &signed,
            body,
            url: "https://mycompany.com/myapp.php?foo=1&bar=3",
        };
        assert!(check.verify(&elsewhere, now()).is_err());
    }

    #[test]
    fn twilio_json_bodies_are_signed_through_their_digest_in_the_url() {
        let body = br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#;
        let url = "https://example.com/myapp?bodySHA256=5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9";
        let check = SignatureCheck::new(Scheme::twilio(), DEFAULT_TOLERANCE, vec!["12345".into()]);
        let signed = headers(&[
            ("x-twilio-signature", "hPXmLwIy3Fgqv1i9KPmH/HhQ6zo="),
            ("content-type", "application/json"),
        ]);
        let request = SignedRequest {
            headers: &signed,
            body,
            url,
        };
        assert!(check.verify(&request, now()).is_ok());
        let tampered = SignedRequest {
            headers: &signed,
            body: br#"{"CallSid":"CA1234567890ABCDF","Caller":"+12349013030"}"#,
            url,
        };
        assert!(
            check.verify(&tampered, now()).is_err(),
            "the body must match its digest"
        );
    }

    #[test]
    fn blank_secrets_key_nothing_so_everything_is_refused() {
        let blank = SignatureCheck::new(Scheme::github(), DEFAULT_TOLERANCE, vec!["  ".into()]);
        assert!(!blank.has_secret());
        let prefix_only =
            SignatureCheck::standard_webhooks(vec!["whsec_".into(), " ".into()], DEFAULT_TOLERANCE)
                .unwrap();
        assert!(!prefix_only.has_secret());
    }
}
