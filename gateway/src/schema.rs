//! JSON Schema validation of payloads, compiled once per workflow at load.
//!
//! Remote `$ref` resolution is compiled out (no network access from config), so a schema must
//! be self-contained. Violations are reported with their instance path, capped in number so
//! that a hostile payload cannot make the error response unbounded.

use crate::error::Violation;
use serde_json::Value;

/// Most violations listed in one response; the rest are summarised by the count in the message.
const MAX_LISTED_VIOLATIONS: usize = 50;

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
    /// Compiles `schema`; the draft is taken from `$schema`, defaulting to 2020-12.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
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

    /// Every way `instance` breaks the schema, in document order, at most 50.
    pub fn violations(&self, instance: &Value) -> Vec<Violation> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(MAX_LISTED_VIOLATIONS)
            .map(|error| Violation {
                instance_path: error.instance_path().as_str().to_string(),
                message: error.to_string(),
            })
            .collect()
    }
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

        let violations = schema.violations(&json!({ "qty": 0 }));
        let paths: Vec<&str> = violations
            .iter()
            .map(|v| v.instance_path.as_str())
            .collect();
        assert!(
            paths.contains(&""),
            "missing id is reported at the root: {paths:?}"
        );
        assert!(paths.contains(&"/qty"), "{paths:?}");
        assert!(schema.violations(&json!({ "id": 1, "qty": 2 })).is_empty());
    }

    #[test]
    fn an_integer_beyond_64_bits_is_an_integer() {
        let schema =
            Schema::compile(&json!({ "properties": { "id": { "type": "integer" } } })).unwrap();
        let payload: Value = serde_json::from_str(r#"{"id": 98765432109876543210}"#).unwrap();
        assert!(schema.violations(&payload).is_empty());
    }

    #[test]
    fn refuses_an_invalid_schema() {
        assert!(Schema::compile(&json!({ "type": "no-such-type" })).is_err());
    }
}
