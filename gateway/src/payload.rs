//! Turning request bytes into an event: the media type check, the nesting limit and the JSON
//! parse. Reading the bytes off the socket (and the size cap) belongs to `edge`.
//!
//! Numbers are parsed with arbitrary precision, so integers beyond 2^53 or 64 bits keep their
//! exact digits through validation, mapping and the JSON the gateway sends back.

use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::Value;

/// The body formats the gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `text/plain`: the event is the body as one string.
    Text,
}

/// Undoes `Content-Encoding: gzip` (or `x-gzip`), stopping past `limit` decompressed bytes so
/// that a small compressed body cannot expand without bound. `identity` and no encoding pass
/// the body through; any other coding is 415 (RFC 9110 §15.5.16).
pub fn decompress(
    content_encoding: Option<&str>,
    body: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, GatewayError> {
    use std::io::Read;

    let coding = content_encoding.map(|coding| coding.trim().to_ascii_lowercase());
    match coding.as_deref() {
        None | Some("" | "identity") => return Ok(body),
        Some("gzip" | "x-gzip") => {}
        Some(other) => {
            return Err(GatewayError::UnsupportedMediaType(format!(
                "content-encoding {}",
                truncate(other, 50)
            )))
        }
    }

    let mut decompressed = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
    reader
        .read_to_end(&mut decompressed)
        .map_err(|_| GatewayError::BadRequest("the gzip body is corrupt".into()))?;
    if decompressed.len() > limit {
        return Err(GatewayError::PayloadTooLarge { limit_bytes: limit });
    }
    Ok(bytes::Bytes::from(decompressed))
}

/// The format of a body by its media type: JSON for `application/json` and any `+json`
/// suffix, form for `application/x-www-form-urlencoded`, matched case-insensitively with
/// parameters ignored (RFC 9110 §8.3.1). A request without a `Content-Type` is read as JSON,
/// since many senders omit it. Only the formats in `accepted` pass; the rest are 415.
pub fn format_of(content_type: Option<&str>, accepted: &[Format]) -> Result<Format, GatewayError> {
    let format = match content_type {
        None => Some(Format::Json),
        Some(raw) => {
            let essence = raw
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence == "application/json"
                || (essence.ends_with("+json") && essence.contains('/'))
            {
                Some(Format::Json)
            } else if essence == "application/x-www-form-urlencoded" {
                Some(Format::Form)
            } else if essence == "text/plain" {
                Some(Format::Text)
            } else {
                None
            }
        }
    };
    match format {
        Some(format) if accepted.contains(&format) => Ok(format),
        _ => {
            let named = content_type.unwrap_or("(none)");
            Err(GatewayError::UnsupportedMediaType(truncate(named, 100)))
        }
    }
}

/// A `text/plain` body as the event: one string. Bytes that are not UTF-8 are 400.
pub fn parse_text(body: &[u8]) -> Result<Value, GatewayError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    std::str::from_utf8(body)
        .map(|text| Value::String(text.to_string()))
        .map_err(|_| GatewayError::BadRequest("the text body is not UTF-8".into()))
}

/// Parses a form body into an object: a name given once is a string, a name given several
/// times an array of strings. A form whose only field is `payload` holding JSON (GitHub's
/// form deliveries) is that JSON document instead.
pub fn parse_form(body: &[u8], max_depth: usize) -> Result<Value, GatewayError> {
    let mut fields = serde_json::Map::new();
    for (name, value) in form_urlencoded::parse(body) {
        let value = Value::String(value.into_owned());
        match fields.get_mut(name.as_ref()) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                fields.insert(name.into_owned(), value);
            }
        }
    }

    if fields.len() == 1 {
        if let Some(Value::String(inner)) = fields.get("payload") {
            if let Ok(document) = parse_json(inner.as_bytes(), max_depth) {
                return Ok(document);
            }
        }
    }
    Ok(Value::Object(fields))
}

/// Parses a JSON body. An empty body (or one of only white space) is the event `null`, so a
/// sender's empty ping reaches the schema, which decides whether that is acceptable.
pub fn parse_json(body: &[u8], max_depth: usize) -> Result<Value, GatewayError> {
    // A UTF-8 byte-order mark is not JSON (RFC 8259 §8.1) but some senders add it.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }

    if nesting_exceeds(body, max_depth) {
        return Err(GatewayError::JsonTooDeep { limit: max_depth });
    }

    // The depth was bounded above, so serde_json's own fixed limit of 128 is not needed.
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    deserializer.disable_recursion_limit();
    let value = Value::deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error| GatewayError::InvalidJson(error.to_string()))?;
    Ok(value)
}

/// How deep JSON the gateway reads back from its own records may nest: run results, journaled
/// bodies and backend answers. It is the most `limits.max_json_depth` allows, so whatever the
/// intake accepted reads back as JSON; serde_json alone would stop at 128 levels.
pub const RECORDED_MAX_DEPTH: usize = 1024;

/// Recorded bytes as JSON; `None` when they are empty, not JSON, or nest deeper than
/// [`RECORDED_MAX_DEPTH`], for the caller to show as text instead.
pub fn parse_recorded(bytes: &[u8]) -> Option<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    parse_json(bytes, RECORDED_MAX_DEPTH).ok()
}

/// Checks that a body is one well-formed JSON document within the depth limit, without
/// building it: for workflows that use none of the event's contents.
pub fn validate_json(body: &[u8], max_depth: usize) -> Result<(), GatewayError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    // Skipping a string does not decode it, so text that is not UTF-8 (which JSON must be,
    // RFC 8259 §8.1) is caught here, as building the tree would.
    if let Err(error) = std::str::from_utf8(body) {
        return Err(GatewayError::InvalidJson(format!(
            "the body is not UTF-8 text (byte {})",
            error.valid_up_to()
        )));
    }
    if nesting_exceeds(body, max_depth) {
        return Err(GatewayError::JsonTooDeep { limit: max_depth });
    }

    let mut deserializer = serde_json::Deserializer::from_slice(body);
    deserializer.disable_recursion_limit();
    serde::de::IgnoredAny::deserialize(&mut deserializer)
        .and_then(|_| deserializer.end())
        .map_err(|error| GatewayError::InvalidJson(error.to_string()))
}

/// Whether arrays and objects nest deeper than `max_depth` anywhere in `body`.
///
/// A linear scan that skips string contents; it runs before parsing so that a hostile
/// document cannot drive the parser's recursion.
fn nesting_exceeds(body: &[u8], max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;

    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_match_in_any_case_with_parameters_and_only_accepted_formats_pass() {
        let both = [Format::Json, Format::Form];
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.github+json",
        ] {
            assert_eq!(
                format_of(Some(json), &both).unwrap(),
                Format::Json,
                "{json}"
            );
        }
        assert_eq!(format_of(None, &both).unwrap(), Format::Json);
        let form = "Application/X-WWW-Form-Urlencoded; charset=utf-8";
        assert_eq!(format_of(Some(form), &both).unwrap(), Format::Form);
        assert!(format_of(Some(form), &[Format::Json]).is_err());
        for refused in ["text/plain", "application/jsonx", "+json"] {
            assert!(format_of(Some(refused), &both).is_err(), "{refused}");
        }
    }

    #[test]
    fn gzip_bodies_are_expanded_within_the_limit_and_corrupt_ones_refused() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&[b' '; 10_000]).unwrap();
        let compressed = bytes::Bytes::from(encoder.finish().unwrap());

        let expanded = decompress(Some("GZIP"), compressed.clone(), 10_000).unwrap();
        assert_eq!(expanded.len(), 10_000);
        let too_big = decompress(Some("gzip"), compressed.clone(), 9_999).unwrap_err();
        assert_eq!(too_big.status(), 413);
        let corrupt = decompress(Some("gzip"), compressed.slice(..20), 10_000).unwrap_err();
        assert_eq!(corrupt.status(), 400);
        assert_eq!(
            decompress(Some("br"), compressed, 10).unwrap_err().status(),
            415
        );
    }

    #[test]
    fn forms_become_objects_and_a_lone_json_payload_field_its_document() {
        let slack = b"token=x&command=%2Fdeploy&text=a%2Ab+c%2B1&user_name=jane.doe&tag=1&tag=2";
        let fields = parse_form(slack, 64).unwrap();
        assert_eq!(fields["text"], "a*b c+1");
        assert_eq!(fields["command"], "/deploy");
        assert_eq!(fields["tag"], serde_json::json!(["1", "2"]));

        let github =
            b"payload=%7B%22zen%22%3A%22Keep%20it%20logically%20awesome.%22%2C%22hook_id%22%3A1%7D";
        let inner = parse_form(github, 64).unwrap();
        assert_eq!(inner["zen"], "Keep it logically awesome.");
        assert_eq!(inner["hook_id"], 1);
        let not_json = parse_form(b"payload=hello", 64).unwrap();
        assert_eq!(not_json["payload"], "hello");
    }

    #[test]
    fn counts_nesting_outside_strings_only() {
        let deep = format!("{}0{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_json(deep.as_bytes(), 200).is_ok());
        assert!(matches!(
            parse_json(deep.as_bytes(), 199),
            Err(GatewayError::JsonTooDeep { limit: 199 })
        ));
        let brackets_in_string = format!(r#"{{"s": "{}\"["}}"#, "[".repeat(500));
        assert!(parse_json(brackets_in_string.as_bytes(), 2).is_ok());
    }

    #[test]
    fn survives_ten_thousand_levels_without_recursing() {
        let hostile = format!(r#"{{"x":{}0{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_json(hostile.as_bytes(), 256),
            Err(GatewayError::JsonTooDeep { .. })
        ));
    }

    #[test]
    fn empty_body_is_null_and_bom_is_tolerated() {
        assert_eq!(parse_json(b"", 8).unwrap(), Value::Null);
        assert_eq!(parse_json(b" \n", 8).unwrap(), Value::Null);
        assert_eq!(
            parse_json(b"\xEF\xBB\xBF{}", 8).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn keeps_big_integers_and_decimals_exact() {
        let body = br#"{"big":9223372036854775808,"neg":-9223372036854775809,"f":0.1}"#;
        let value = parse_json(body, 8).unwrap();
        assert_eq!(value["big"].to_string(), "9223372036854775808");
        assert_eq!(value["neg"].to_string(), "-9223372036854775809");
        assert_eq!(value["f"].to_string(), "0.1");
    }

    #[test]
    fn validation_without_building_agrees_with_parsing() {
        for body in [
            &b"{}"[..],
            b"[1, {\"a\": \"x\"}]",
            b"",
            b"{",
            b"{} x",
            b"[[[[1]]]]",
        ] {
            let parsed = parse_json(body, 3).map(drop).map_err(|e| e.code());
            let validated = validate_json(body, 3).map_err(|e| e.code());
            assert_eq!(parsed, validated, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn trailing_garbage_is_invalid_json() {
        assert!(matches!(
            parse_json(b"{} x", 8),
            Err(GatewayError::InvalidJson(_))
        ));
    }
}
