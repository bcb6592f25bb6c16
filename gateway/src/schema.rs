//! JSON Schema validation of payloads, compiled once per workflow at load.
//!
//! Remote `$ref` resolution is compiled out (no network access from config), so a schema must
//! be self-contained. Violations are reported with their instance path, capped in number so
//! that a hostile payload cannot make the error response unbounded.

use crate::error::Violation;
use serde_json::Value;

/// Most violations listed in one response; the message gives the total.
const MAX_LISTED_VIOLATIONS: usize = 50;

/// Longest violation message; the validator quotes offending values, which can be huge.
const MAX_MESSAGE_CHARS: usize = 300;

/// A compiled schema.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles `schema`; the draft is taken from `$schema`, defaulting to 2020-12. `format`
    /// is asserted (an `email` must look like one), as authors of webhook schemas expect.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .map(|validator| Self { validator })
            .map_err(|error| {
                let at = error.schema_path().as_str();
                if at.is_empty() {
                    error.to_string()
                } else {
                    format!("{error} (at schema path {at})")
                }
            })
    }

    /// How `instance` breaks the schema: the total count of violations and the first 50, in
    /// document order. An empty list means the instance is valid.
    pub fn violations(&self, instance: &Value) -> (usize, Vec<Violation>) {
        if self.validator.is_valid(instance) {
            return (0, Vec::new());
        }
        let mut total = 0;
        let mut listed = Vec::new();
        for error in self.validator.iter_errors(instance) {
            total += 1;
            if listed.len() < MAX_LISTED_VIOLATIONS {
                listed.push(Violation {
                    instance_path: error.instance_path().as_str().to_string(),
                    message: shorten(error.to_string()),
                });
            }
        }
        (total, listed)
    }
}

fn shorten(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let kept: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_each_violation_with_its_instance_path() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["id"],
            "properties": { "id": { "type": "integer" }, "qty": { "minimum": 1 } }
        }))
        .unwrap();

        let (total, violations) = schema.violations(&json!({ "qty": 0 }));
        assert_eq!(total, violations.len());
        let paths: Vec<&str> = violations
            .iter()
            .map(|v| v.instance_path.as_str())
            .collect();
        assert!(
            paths.contains(&""),
            "missing id is reported at the root: {paths:?}"
        );
        assert!(paths.contains(&"/qty"), "{paths:?}");
        assert_eq!(schema.violations(&json!({ "id": 1, "qty": 2 })).0, 0);
    }

    #[test]
    fn an_integer_beyond_64_bits_is_an_integer() {
        let schema =
            Schema::compile(&json!({ "properties": { "id": { "type": "integer" } } })).unwrap();
        let payload: Value = serde_json::from_str(r#"{"id": 98765432109876543210}"#).unwrap();
        assert_eq!(schema.violations(&payload).0, 0);
    }

    #[test]
    fn counts_every_violation_but_lists_and_quotes_only_a_bounded_part() {
        let schema = Schema::compile(&json!({ "items": { "type": "integer" } })).unwrap();
        let long = "x".repeat(10_000);
        let payload = Value::Array(vec![Value::String(long); 200]);
        let (total, listed) = schema.violations(&payload);
        assert_eq!((total, listed.len()), (200, 50));
        assert!(listed[0].message.chars().count() <= 301);
    }

    #[test]
    fn formats_are_asserted() {
        let schema = Schema::compile(&json!({ "format": "email" })).unwrap();
        assert_eq!(schema.violations(&json!("not-an-email")).0, 1);
        assert_eq!(schema.violations(&json!("ada@example.com")).0, 0);
    }

    #[test]
    fn refuses_an_invalid_schema() {
        assert!(Schema::compile(&json!({ "type": "no-such-type" })).is_err());
    }
}
