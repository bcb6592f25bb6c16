//! Declarative mapping from an incoming event to named workflow variables.
//!
//! A variable's value comes from an RFC 6901 pointer into the payload, a request header or a
//! query parameter, optionally coerced to a simple type, with a default and a required flag.
//! Rules are parsed and checked once at load; applying them only walks and copies values.

use crate::error::GatewayError;
use http::HeaderMap;
use serde_json::{Map, Number, Value};
use std::str::FromStr;

/// An RFC 6901 JSON pointer, split into unescaped reference tokens at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses a pointer, refusing what RFC 6901 forbids: a first character other than `/`, and
    /// a `~` not followed by `0` or `1`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(format!(
                "json pointer {text:?} must be empty or start with '/'"
            ));
        };

        let tokens = body
            .split('/')
            .map(|token| unescape_token(token).map_err(|e| format!("json pointer {text:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value the pointer designates in `document`, if any.
    pub fn resolve<'a>(&self, document: &'a Value) -> Option<&'a Value> {
        self.tokens
            .iter()
            .try_fold(document, |current, token| match current {
                Value::Object(map) => map.get(token),
                Value::Array(items) => array_index(token).and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

fn unescape_token(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();

    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err("'~' must be followed by '0' or '1'".into()),
        }
    }
    Ok(out)
}

/// RFC 6901 array indexes: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits_only = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = token.len() > 1 && token.starts_with('0');
    if digits_only && !leading_zero {
        token.parse().ok()
    } else {
        None
    }
}

/// Where a variable's value comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Body(Pointer),
    /// Lowercased header name.
    Header(String),
    Query(String),
}

/// The type a variable is coerced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Any,
    String,
    Integer,
    Number,
    Boolean,
}

/// How one variable is filled.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub source: Source,
    pub value_type: ValueType,
    pub required: bool,
    /// Already coerced to `value_type` at load.
    pub default: Option<Value>,
}

/// The request parts a mapping reads.
pub struct MappingInput<'a> {
    pub event: &'a Value,
    pub headers: &'a HeaderMap,
    /// Decoded query parameters, in order; the first occurrence of a name wins.
    pub query: &'a [(String, String)],
}

/// All the variable rules of one workflow, in the order the workflow file lists them.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    rules: Vec<Rule>,
}

impl Mapping {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Fills every variable. A missing value takes the default, else is `null`, else (when
    /// required) fails with `missing_field`. `null` in the payload counts as missing.
    pub fn apply(&self, input: &MappingInput<'_>) -> Result<Map<String, Value>, GatewayError> {
        let mut variables = Map::with_capacity(self.rules.len());

        for rule in &self.rules {
            let value = match lookup(&rule.source, input) {
                Some(found) => {
                    coerce(found, rule.value_type).map_err(|reason| GatewayError::InvalidField {
                        name: rule.name.clone(),
                        reason,
                    })?
                }
                None if rule.required => return Err(GatewayError::MissingField(rule.name.clone())),
                None => rule.default.clone().unwrap_or(Value::Null),
            };
            variables.insert(rule.name.clone(), value);
        }
        Ok(variables)
    }
}

/// The raw value for a source, or `None` when absent or `null`.
fn lookup(source: &Source, input: &MappingInput<'_>) -> Option<Value> {
    match source {
        Source::Body(pointer) => pointer
            .resolve(input.event)
            .filter(|value| !value.is_null())
            .cloned(),
        Source::Header(name) => input
            .headers
            .get(name)
            .map(|value| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned())),
        Source::Query(name) => input
            .query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| Value::String(value.clone())),
    }
}

/// Coerces `value` to `value_type`, explaining a refusal in words that follow "field X".
pub fn coerce(value: Value, value_type: ValueType) -> Result<Value, String> {
    match (value_type, value) {
        (ValueType::Any, value) => Ok(value),
        (ValueType::String, Value::String(text)) => Ok(Value::String(text)),
        (ValueType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (ValueType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (ValueType::Integer, Value::Number(n)) if is_integer(&n) => Ok(Value::Number(n)),
        (ValueType::Integer, Value::Number(n)) => integral_float(&n),
        (ValueType::Integer, Value::String(text)) => parse_integer(text.trim()),
        (ValueType::Number, Value::Number(n)) => Ok(Value::Number(n)),
        (ValueType::Number, Value::String(text)) => parse_number(text.trim()),
        (ValueType::Boolean, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ValueType::Boolean, Value::Number(n)) => parse_boolean(&n.to_string()),
        (ValueType::Boolean, Value::String(text)) => parse_boolean(&text),
        (wanted, other) => Err(format!(
            "is {} and cannot be read as {}",
            json_type_name(&other),
            type_name(wanted)
        )),
    }
}

/// Integers keep their exact digits, however large: the payload is parsed with arbitrary
/// precision, so a number is an integer when its text has no fraction or exponent.
fn is_integer(number: &Number) -> bool {
    !number.to_string().contains(['.', 'e', 'E'])
}

/// Digits with an optional sign; leading zeros are dropped (`"007"` is 7). Any size is kept
/// exact. A number in exponent or decimal form is accepted when its value is whole.
fn parse_integer(text: &str) -> Result<Value, String> {
    let refusal = || format!("is {text:?}, which is not an integer");
    let (sign, digits) = match text.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", text.strip_prefix('+').unwrap_or(text)),
    };
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = digits.trim_start_matches('0');
        let canonical = match trimmed {
            "" => "0".to_string(),
            _ => format!("{sign}{trimmed}"),
        };
        return Number::from_str(&canonical)
            .map(Value::Number)
            .map_err(|_| refusal());
    }
    Number::from_str(text)
        .ok()
        .and_then(|number| integral_float(&number).ok())
        .ok_or_else(refusal)
}

/// A number such as `1e2` or `3.0` whose value is whole and within ±2^53, where a float still
/// stands for exactly one integer.
fn integral_float(number: &Number) -> Result<Value, String> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float.abs() <= EXACT => {
            Ok(Value::from(float as i64))
        }
        _ => Err(format!("is {number}, which is not an integer")),
    }
}

fn parse_number(text: &str) -> Result<Value, String> {
    Number::from_str(text)
        .map(Value::Number)
        .map_err(|_| format!("is {text:?}, which is not a number"))
}

fn parse_boolean(text: &str) -> Result<Value, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(Value::Bool(true)),
        "false" | "0" | "no" => Ok(Value::Bool(false)),
        _ => Err(format!("is {text:?}, which is not a boolean")),
    }
}

fn type_name(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::Any => "any",
        ValueType::String => "a string",
        ValueType::Integer => "an integer",
        ValueType::Number => "a number",
        ValueType::Boolean => "a boolean",
    }
}

pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document() -> Value {
        serde_json::from_str(
            r#"{"properties":{"sonar.analysis.buildnumber":"1567096760967"},"a~b":1,"x~1y":2,
                "":"empty-key","m":{"application/vnd.x+json; v=1":{"s":"Medium"}},
                "list":[10,20],"id":1497549923779084388}"#,
        )
        .unwrap()
    }

    fn at(pointer: &str) -> Option<Value> {
        Pointer::parse(pointer)
            .unwrap()
            .resolve(&document())
            .cloned()
    }

    #[test]
    fn resolves_rfc6901_escapes_and_odd_keys() {
        assert_eq!(
            at("/properties/sonar.analysis.buildnumber"),
            Some(json!("1567096760967"))
        );
        assert_eq!(at("/a~0b"), Some(json!(1)));
        assert_eq!(at("/x~01y"), Some(json!(2)));
        assert_eq!(at("/"), Some(json!("empty-key")));
        assert_eq!(
            at("/m/application~1vnd.x+json; v=1/s"),
            Some(json!("Medium"))
        );
        assert_eq!(at("/list/1"), Some(json!(20)));
        assert_eq!(at("/list/01"), None);
        assert_eq!(at("/missing"), None);
    }

    #[test]
    fn refuses_malformed_pointers() {
        assert!(Pointer::parse("a/b").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
    }

    #[test]
    fn keeps_integers_beyond_53_bits_exact() {
        let id = at("/id").unwrap();
        assert_eq!(id.to_string(), "1497549923779084388");
        let coerced = coerce(json!("98765432109876543210"), ValueType::Integer).unwrap();
        assert_eq!(coerced.to_string(), "98765432109876543210");
    }

    #[test]
    fn coerces_simple_types_and_explains_refusals() {
        assert_eq!(coerce(json!(42), ValueType::String).unwrap(), json!("42"));
        assert_eq!(
            coerce(json!("yes"), ValueType::Boolean).unwrap(),
            json!(true)
        );
        assert_eq!(
            coerce(json!(" 7 "), ValueType::Integer)
                .unwrap()
                .to_string(),
            "7"
        );
        assert!(coerce(json!(1.5), ValueType::Integer).is_err());
        assert_eq!(
            coerce(json!("1e3"), ValueType::Integer).unwrap(),
            json!(1000)
        );
        assert_eq!(
            coerce(json!("007"), ValueType::Integer)
                .unwrap()
                .to_string(),
            "7"
        );
        assert_eq!(
            coerce(json!("-0"), ValueType::Integer).unwrap().to_string(),
            "0"
        );
        assert_eq!(coerce(json!(3.0), ValueType::Integer).unwrap(), json!(3));
        assert!(coerce(json!("12a"), ValueType::Integer).is_err());
        assert_eq!(coerce(json!(1), ValueType::Boolean).unwrap(), json!(true));
        assert!(coerce(json!({"a": 1}), ValueType::String)
            .unwrap_err()
            .contains("an object"));
    }
}
