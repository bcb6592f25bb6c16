//! Property tests over the intake: whatever headers, content types, encodings and bodies a
//! sender makes up, decoding and signature checks answer with a value or a typed error and
//! never panic. A bounded number of cases runs with the unit tests.

use crate::payload::{self, Format};
use crate::signature::{Scheme, SignatureCheck, SignedRequest, DEFAULT_TOLERANCE};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

const ALL_FORMATS: [Format; 3] = [Format::Json, Format::Form, Format::Text];

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        Just(Some("application/x-www-form-urlencoded".to_string())),
        Just(Some("text/plain; charset=utf-8".to_string())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "[\\[\\]{}\":,0-9a-z ]{0,256}".prop_map(String::into_bytes),
        "(payload=)?[%A-Za-z0-9=&+]{0,200}".prop_map(String::into_bytes),
    ]
}

fn headers(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes());
        let value = HeaderValue::from_str(value);
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    map
}

fn signature_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("x-hub-signature-256".to_string()),
        Just("stripe-signature".to_string()),
        Just("x-shopify-hmac-sha256".to_string()),
        Just("x-slack-signature".to_string()),
        Just("x-slack-request-timestamp".to_string()),
        Just("x-twilio-signature".to_string()),
        Just("webhook-id".to_string()),
        Just("webhook-timestamp".to_string()),
        Just("webhook-signature".to_string()),
        Just("content-type".to_string()),
        "[a-z-]{1,20}",
    ];
    proptest::collection::vec((name, "[ -~]{0,120}"), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_never_panics(content_type in content_types(), body in bodies()) {
        if let Ok(format) = payload::format_of(content_type.as_deref(), &ALL_FORMATS) {
            let _ = match format {
                Format::Json => payload::parse_json(&body, 64),
                Format::Form => payload::parse_form(&body, 64),
                Format::Text => payload::parse_text(&body),
            };
        }
        let _ = payload::validate_json(&body, 64);
    }

    #[test]
    fn decompression_never_panics(coding in "[ -~]{0,12}", body in bodies()) {
        let _ = payload::decompress(Some(&coding), bytes::Bytes::from(body.clone()), 4096);
        let _ = payload::decompress(Some("gzip"), bytes::Bytes::from(body), 4096);
    }

    #[test]
    fn signature_checks_never_panic(pairs in signature_headers(), body in bodies()) {
        let headers = headers(&pairs);
        let schemes = [
            Scheme::github(),
            Scheme::stripe(),
            Scheme::shopify(),
            Scheme::slack(),
            Scheme::twilio(),
            Scheme::standard_webhooks(),
        ];
        for scheme in schemes {
            let check = SignatureCheck::new(scheme, DEFAULT_TOLERANCE, vec!["secret".into()]);
            for url in ["https://hooks.example.com/h/x?bodySHA256=00", "http://[::1", ""] {
                let request = SignedRequest { headers: &headers, body: &body, url };
                prop_assert!(check.verify(&request, std::time::SystemTime::now()).is_err());
            }
        }
    }
}
