//! The answer of a test URL: what arrived, what each step of the pipeline made of it, and how
//! long each step took, so an author can see where an event goes wrong without reading logs.

use crate::error::GatewayError;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Steps in the order the pipeline runs them.
pub const STEPS: [&str; 5] = ["decode", "schema", "mapping", "script", "forward"];

/// Steps taken so far, and the outcome.
pub struct Trace {
    started: Instant,
    steps: Vec<Value>,
    error: Option<Value>,
    status: u16,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            steps: Vec::new(),
            error: None,
            status: 200,
        }
    }

    /// Runs one step, timing it and recording its output (as `describe` shows it) or error.
    pub fn step<T>(
        &mut self,
        name: &'static str,
        work: impl FnOnce() -> Result<T, GatewayError>,
        describe: impl FnOnce(&T) -> Option<Value>,
    ) -> Option<T> {
        let started = Instant::now();
        let outcome = work();
        let duration_ms = elapsed_ms(started);
        match outcome {
            Ok(value) => {
                let mut step = json!({ "step": name, "outcome": "ok", "duration_ms": duration_ms });
                if let Some(output) = describe(&value) {
                    step["output"] = output;
                }
                self.steps.push(step);
                Some(value)
            }
            Err(error) => {
                self.fail(name, &error, None, duration_ms);
                None
            }
        }
    }

    /// Records a finished step whose outcome the caller computed (the script, the forward).
    pub fn record(&mut self, name: &'static str, step: Map<String, Value>, duration_ms: f64) {
        let mut entry = Map::new();
        entry.insert("step".into(), json!(name));
        entry.extend(step);
        entry.insert("duration_ms".into(), json!(duration_ms));
        self.steps.push(Value::Object(entry));
    }

    /// Records a failed step; the trace's status becomes the one a production caller would get.
    pub fn fail(
        &mut self,
        name: &'static str,
        error: &GatewayError,
        detail: Option<String>,
        duration_ms: f64,
    ) {
        let mut described = error.to_json(None)["error"].clone();
        if let Some(detail) = detail {
            described["detail"] = json!(detail);
        }
        self.steps.push(json!({
            "step": name, "outcome": "error", "duration_ms": duration_ms, "error": described
        }));
        self.status = error.status();
        self.error = Some(described);
    }

    /// Marks the steps from `from` on as not run, with the reason.
    pub fn skip_rest(&mut self, reason: &str) {
        let done = self.steps.len();
        for name in STEPS.iter().skip(done) {
            self.skip(name, reason);
        }
    }

    pub fn skip(&mut self, name: &'static str, reason: &str) {
        self.steps
            .push(json!({ "step": name, "outcome": "skipped", "reason": reason }));
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The status a production caller would have received.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The whole trace; `extra` (workflow, received, variables, result) is merged in.
    pub fn finish(self, extra: Map<String, Value>) -> Value {
        let mut trace = Map::new();
        trace.insert("test".into(), json!(true));
        trace.insert(
            "outcome".into(),
            json!(if self.error.is_some() {
                "failed"
            } else {
                "succeeded"
            }),
        );
        trace.insert("status".into(), json!(self.status));
        trace.extend(extra);
        trace.insert("steps".into(), Value::Array(self.steps));
        if let Some(error) = self.error {
            trace.insert("error".into(), error);
        }
        trace.insert("duration_ms".into(), json!(elapsed_ms(self.started)));
        Value::Object(trace)
    }
}

pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_sets_the_status_and_the_rest_are_skipped() {
        let mut trace = Trace::new();
        let decoded = trace.step("decode", || Ok(json!({"a": 1})), |_| None);
        assert!(decoded.is_some());
        let checked: Option<()> = trace.step(
            "schema",
            || Err(GatewayError::MissingField("a".into())),
            |_| None,
        );
        assert!(checked.is_none());
        trace.skip_rest("an earlier step failed");

        assert!(trace.failed());
        let value = trace.finish(Map::new());
        assert_eq!(value["status"], 422);
        assert_eq!(value["outcome"], "failed");
        assert_eq!(value["error"]["code"], "missing_field");
        let steps = value["steps"].as_array().unwrap();
        assert_eq!(steps.len(), STEPS.len());
        assert_eq!(steps[1]["outcome"], "error");
        assert_eq!(steps[4]["step"], "forward");
        assert_eq!(steps[4]["outcome"], "skipped");
    }
}
