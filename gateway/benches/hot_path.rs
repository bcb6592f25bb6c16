//! Microbenchmarks of the steps every request on a workflow's URL goes through: the API key
//! check, the signature check, decoding with schema validation, mapping, and the script.
//! They run on a workflow loaded through the real configuration loader, over the same 1 KB
//! order event that `bench/run.sh` sends.
//!
//!     cargo bench -p webhook-gateway --bench hot_path

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;
use std::hint::black_box;
use webhook_gateway::config::{self, Config, Workflow};
use webhook_gateway::pipeline::{self, RequestParts};
use webhook_gateway::signature::SignedRequest;

const KEY: &str = "bench-key-0123456789abcdef";
const SECRET: &str = "bench-signing-secret";

/// The workflow and script of the load benchmark, so both benchmarks measure the same thing.
const INLINE: &str = include_str!("../../bench/workflows/inline.yaml");
const SCRIPT: &str = include_str!("../../bench/scripts/inline.rhai");

const SIGNED: &str =
    "id: signed\nsignature:\n  preset: github\n  secrets: [\"bench-signing-secret\"]\n";

/// The order event of the load benchmark: 12 items, about 1.1 KB.
fn order_event() -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            serde_json::json!({
                "sku": format!("SKU-{i:04}"), "name": format!("Item number {i}"),
                "quantity": i % 3 + 1, "unit_price": 9.5 + f64::from(i)
            })
        })
        .collect();
    let event = serde_json::json!({
        "id": "ord_77001", "customer": {"email": "bench@example.com", "name": "Bench"},
        "currency": "EUR", "channel": "web", "items": items
    });
    serde_json::to_vec(&event).unwrap()
}

/// Loads the two workflows through the configuration loader, from a folder of their own.
fn load() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("workflows")).unwrap();
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    let gateway = format!(
        "paths:\n  state: {}\napi_keys:\n  - name: bench\n    key: \"{KEY}\"\n",
        root.join("state").display()
    );
    std::fs::write(root.join("gateway.yaml"), gateway).unwrap();
    std::fs::write(root.join("workflows/inline.yaml"), INLINE).unwrap();
    std::fs::write(root.join("workflows/signed.yaml"), SIGNED).unwrap();
    std::fs::write(root.join("scripts/inline.rhai"), SCRIPT).unwrap();
    let config = config::load(&root.join("gateway.yaml")).unwrap_or_else(|errors| {
        panic!("the benchmark's configuration does not load: {errors}");
    });
    (dir, config)
}

fn workflow<'a>(config: &'a Config, id: &str) -> &'a Workflow {
    config.workflow(id).expect("the workflow is loaded")
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    headers
}

fn hot_path(c: &mut Criterion) {
    let (_dir, config) = load();
    let inline = workflow(&config, "inline");
    let signed = workflow(&config, "signed");
    let body = order_event();
    let json = headers(&[
        ("content-type", "application/json".into()),
        ("x-api-key", KEY.into()),
    ]);
    let parts = RequestParts {
        headers: &json,
        query: None,
        body: &body,
    };

    c.bench_function("api_key_check", |b| {
        b.iter(|| {
            let key = config.keys.authenticate(&inline.key_policy, &json, None);
            black_box(key.unwrap());
        });
    });

    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signed_headers = headers(&[("x-hub-signature-256", signature)]);
    let check = signed
        .signature
        .as_ref()
        .expect("the signed workflow has a check");
    c.bench_function("signature_check_github_1kb", |b| {
        let request = SignedRequest {
            headers: &signed_headers,
            body: &body,
            url: "https://hooks.example.com/hooks/signed",
        };
        b.iter(|| {
            check
                .verify(black_box(&request), std::time::SystemTime::now())
                .unwrap()
        });
    });

    c.bench_function("decode_and_validate_1kb", |b| {
        b.iter(|| {
            let event = pipeline::decode(&parts, &config.limits, &inline.formats, true).unwrap();
            pipeline::validate(inline, &event).unwrap();
            black_box(event)
        });
    });

    let event = pipeline::decode(&parts, &config.limits, &inline.formats, true).unwrap();
    c.bench_function("mapping_6_variables", |b| {
        b.iter_batched(
            || event.clone(),
            |event| black_box(pipeline::map(inline, event, &parts).unwrap()),
            BatchSize::SmallInput,
        );
    });

    let prepared = pipeline::prepare(inline, &config.limits, &parts).unwrap();
    c.bench_function("script_sum_12_items", |b| {
        b.iter(|| {
            let result = pipeline::execute(&config.engine, inline, &prepared, "run").unwrap();
            black_box(result)
        });
    });

    c.bench_function("whole_inline_pipeline_1kb", |b| {
        b.iter(|| {
            let key = config.keys.authenticate(&inline.key_policy, &json, None);
            black_box(key.unwrap());
            let prepared = pipeline::prepare(inline, &config.limits, &parts).unwrap();
            black_box(pipeline::execute(&config.engine, inline, &prepared, "run").unwrap())
        });
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
