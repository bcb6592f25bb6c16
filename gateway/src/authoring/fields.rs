//! Field discovery from sample webhook payloads.
//!
//! While a workflow is being written, its author sends test events and the gateway keeps the
//! last few bodies. This module walks those parsed bodies and reports every field seen (its
//! pointer, observed types, how often it occurred and an example), proposes a JSON Schema and
//! writes a `mapping:` skeleton in workflow-file syntax, so the author edits a draft instead of
//! starting from a blank file. It owns no storage and no HTTP: callers hand it the bodies and
//! present the result.
//!
//! Array elements are merged: every element examined adds to one shape, listed under index 0
//! (`/items/0/sku`). Webhook arrays hold records of one kind whose count changes from event to
//! event; a field per position would repeat the same keys many times over and still miss the
//! positions a longer array brings. Index 0 keeps each listed pointer valid: it resolves to
//! the first element of any non-empty array.
//!
//! Every walk is bounded: depth by `max_depth`, elements per array by `max_array_items`, the
//! field list by `max_fields`. Payloads are walked with an explicit stack, never by recursion
//! over the input, so no nesting can exhaust the thread's stack.

use crate::script::{RESERVED_NAMES, RHAI_RESERVED_WORDS};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// The draft the proposed schema declares; the gateway's validator picks its draft from it.
const SCHEMA_DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Longest example string kept, in characters: enough to recognise a value, short enough that
/// a pasted document or token does not flood the author's screen.
const EXAMPLE_MAX_CHARS: usize = 120;

/// Depth never walked past, whatever the limits ask. The proposed schema nests two levels per
/// field level and serde_json prints and drops values recursively, so an unbounded depth would
/// only move the stack overflow from this module to whoever serialises the result.
const DEPTH_CEILING: usize = 128;

/// Index of the root node: the event itself, which shapes the schema but is not a field.
const ROOT: usize = 0;

/// Bounds on one discovery run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryLimits {
    /// Most fields listed; later new fields are dropped and `fields_truncated` is set.
    pub max_fields: usize,
    /// Deepest field level examined; a field at this depth is listed, its children are not.
    /// Capped at 128 whatever the value.
    pub max_depth: usize,
    /// Elements examined in each array, from the first.
    pub max_array_items: usize,
    /// Most variables written in the mapping skeleton.
    pub max_mapping_variables: usize,
}

impl Default for DiscoveryLimits {
    fn default() -> Self {
        Self {
            max_fields: 2000,
            max_depth: 32,
            max_array_items: 100,
            max_mapping_variables: 50,
        }
    }
}

/// What the sample events reveal.
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    /// How many events were examined.
    pub samples: usize,
    /// Every field, in order of first appearance.
    pub fields: Vec<Field>,
    /// Whether `max_fields` cut the list (and so the schema and mapping).
    pub fields_truncated: bool,
    /// Whether some field at `max_depth` had children that were not examined.
    pub depth_truncated: bool,
    /// Proposed JSON Schema (draft 2020-12).
    pub schema: Value,
    /// A `mapping:` block, ready to paste into a workflow file.
    pub mapping: String,
}

/// One field seen in the samples.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// RFC 6901 pointer; array elements are merged under index 0.
    pub pointer: String,
    /// Observed JSON types, in the order null, boolean, integer, number, string, array, object.
    pub types: Vec<&'static str>,
    /// In how many events the field occurred.
    pub present: usize,
    /// `present / samples`, rounded to 3 decimals.
    pub presence: f64,
    /// The first non-null scalar seen, long strings cut short with "…".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
}

/// Reports the fields of `events`, proposes a schema for them and drafts a mapping.
pub fn discover(events: &[Value], limits: &DiscoveryLimits) -> Discovery {
    if events.is_empty() {
        return no_samples();
    }

    let mut tree = Tree::new(limits);
    for (index, event) in events.iter().enumerate() {
        tree.absorb(index, event);
    }

    let samples = events.len();
    Discovery {
        samples,
        fields: tree.fields(samples),
        fields_truncated: tree.fields_truncated,
        depth_truncated: tree.depth_truncated,
        schema: tree.schema(),
        mapping: mapping_yaml(&tree, samples, limits.max_mapping_variables),
    }
}

fn no_samples() -> Discovery {
    Discovery {
        samples: 0,
        fields: Vec::new(),
        fields_truncated: false,
        depth_truncated: false,
        schema: json!({ "$schema": SCHEMA_DRAFT }),
        mapping: "# no sample events yet: send test events to discover their fields\n".into(),
    }
}

/// JSON types, declared in the order the API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Null,
        Kind::Boolean,
        Kind::Integer,
        Kind::Number,
        Kind::String,
        Kind::Array,
        Kind::Object,
    ];

    fn of(value: &Value) -> Kind {
        match value {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Boolean,
            Value::Number(n) if is_integral(n) => Kind::Integer,
            Value::Number(_) => Kind::Number,
            Value::String(_) => Kind::String,
            Value::Array(_) => Kind::Array,
            Value::Object(_) => Kind::Object,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// With arbitrary precision on, integers past 64 bits fail `is_i64`/`is_u64`; their text,
/// kept as received, still tells them apart from `1.0` or `1e3`.
fn is_integral(number: &serde_json::Number) -> bool {
    number.is_i64() || number.is_u64() || !number.to_string().contains(['.', 'e', 'E'])
}

/// A set of observed kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kinds(u8);

impl Kinds {
    fn insert(&mut self, kind: Kind) {
        self.0 |= kind.bit();
    }

    fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    fn without(self, kind: Kind) -> Kinds {
        Kinds(self.0 & !kind.bit())
    }

    fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL
            .into_iter()
            .filter(move |kind| self.contains(*kind))
    }

    fn names(self) -> Vec<&'static str> {
        self.iter().map(Kind::name).collect()
    }

    /// The one kind in the set, if there is exactly one.
    fn single(self) -> Option<Kind> {
        let mut kinds = self.iter();
        match (kinds.next(), kinds.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }

    /// Every integer is also a number, so a field seen as both is simply a number.
    fn integers_as_numbers(self) -> Kinds {
        if self.contains(Kind::Number) {
            self.without(Kind::Integer)
        } else {
            self
        }
    }

    /// The JSON Schema `type`: one name, or a list when several types were seen.
    fn schema_type(self) -> Value {
        let names = self.integers_as_numbers().names();
        match names.as_slice() {
            [name] => Value::from(*name),
            _ => Value::from(names),
        }
    }

    /// The mapping's `type:` when the non-null values were all of one scalar type.
    fn mapping_type(self) -> Option<&'static str> {
        let kind = self.without(Kind::Null).integers_as_numbers().single()?;
        match kind {
            Kind::Boolean | Kind::Integer | Kind::Number | Kind::String => Some(kind.name()),
            Kind::Null | Kind::Array | Kind::Object => None,
        }
    }
}

/// One field (or the root) with everything observed about it over all the events.
#[derive(Debug)]
struct Node {
    pointer: String,
    /// The last reference token, unescaped; empty for the root.
    key: String,
    parent: usize,
    kinds: Kinds,
    /// Events in which the node occurred, each counted once.
    present: usize,
    last_event: Option<usize>,
    example: Option<Value>,
    /// Occurrences as an object: what a member's count is compared with for `required`.
    object_count: usize,
    /// Occurrences as a member of an object.
    member_count: usize,
    /// Whether the node stands for array elements.
    is_item: bool,
    /// Members, in order of first appearance.
    properties: Vec<usize>,
    /// The merged element node, once an element was seen.
    items: Option<usize>,
}

impl Node {
    fn new(pointer: String, key: &str, parent: usize) -> Self {
        Self {
            pointer,
            key: key.to_string(),
            parent,
            kinds: Kinds::default(),
            present: 0,
            last_event: None,
            example: None,
            object_count: 0,
            member_count: 0,
            is_item: false,
            properties: Vec::new(),
            items: None,
        }
    }
}

/// How a value is reached from its parent.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Root,
    Member(&'a str),
    Item,
}

/// A value waiting on the walk's stack.
struct Visit<'a> {
    parent: usize,
    step: Step<'a>,
    value: &'a Value,
    depth: usize,
}

/// The merged shape of every event: one node per distinct pointer, in order of creation.
struct Tree {
    nodes: Vec<Node>,
    by_pointer: HashMap<String, usize>,
    max_fields: usize,
    max_depth: usize,
    max_array_items: usize,
    fields_truncated: bool,
    depth_truncated: bool,
}

impl Tree {
    fn new(limits: &DiscoveryLimits) -> Self {
        Self {
            nodes: vec![Node::new(String::new(), "", ROOT)],
            by_pointer: HashMap::new(),
            max_fields: limits.max_fields,
            max_depth: limits.max_depth.min(DEPTH_CEILING),
            max_array_items: limits.max_array_items,
            fields_truncated: false,
            depth_truncated: false,
        }
    }

    /// Merges one event into the tree, depth first in document order.
    fn absorb(&mut self, event_index: usize, event: &Value) {
        let mut stack = vec![Visit {
            parent: ROOT,
            step: Step::Root,
            value: event,
            depth: 0,
        }];

        while let Some(visit) = stack.pop() {
            // Nodes are created when visited rather than when queued, so that a node's
            // children are numbered before its later siblings: that is document order.
            let Some(id) = self.resolve(visit.parent, visit.step) else {
                continue;
            };
            self.observe(id, visit.value, event_index);
            self.queue_children(id, &visit, &mut stack);
        }
    }

    /// The node a step leads to, created on first sight; `None` once the field list is full.
    fn resolve(&mut self, parent: usize, step: Step<'_>) -> Option<usize> {
        match step {
            Step::Root => Some(ROOT),
            Step::Member(key) => {
                let id = self.find_or_create(parent, key)?;
                if self.nodes[id].member_count == 0 {
                    self.nodes[parent].properties.push(id);
                }
                self.nodes[id].member_count += 1;
                Some(id)
            }
            Step::Item => {
                let id = self.find_or_create(parent, "0")?;
                self.nodes[id].is_item = true;
                self.nodes[parent].items = Some(id);
                Some(id)
            }
        }
    }

    fn find_or_create(&mut self, parent: usize, key: &str) -> Option<usize> {
        let pointer = format!("{}/{}", self.nodes[parent].pointer, escape_token(key));
        if let Some(&id) = self.by_pointer.get(&pointer) {
            return Some(id);
        }

        // The root is a node but not a field.
        if self.nodes.len() > self.max_fields {
            self.fields_truncated = true;
            return None;
        }

        let id = self.nodes.len();
        self.by_pointer.insert(pointer.clone(), id);
        self.nodes.push(Node::new(pointer, key, parent));
        Some(id)
    }

    fn observe(&mut self, id: usize, value: &Value, event_index: usize) {
        let node = &mut self.nodes[id];
        node.kinds.insert(Kind::of(value));

        // Array elements visit the same node many times in one event; presence counts events.
        if node.last_event != Some(event_index) {
            node.present += 1;
            node.last_event = Some(event_index);
        }

        if value.is_object() {
            node.object_count += 1;
        }
        if node.example.is_none() {
            node.example = example_of(value);
        }
    }

    fn queue_children<'a>(&mut self, id: usize, visit: &Visit<'a>, stack: &mut Vec<Visit<'a>>) {
        let children = self.children_of(visit.value);
        if children.is_empty() {
            return;
        }
        if visit.depth >= self.max_depth {
            self.depth_truncated = true;
            return;
        }

        let depth = visit.depth + 1;
        // The stack pops last-in first-out: pushing in reverse visits in document order.
        stack.extend(children.into_iter().rev().map(|(step, value)| Visit {
            parent: id,
            step,
            value,
            depth,
        }));
    }

    /// The members or examined elements of a value.
    fn children_of<'a>(&self, value: &'a Value) -> Vec<(Step<'a>, &'a Value)> {
        match value {
            Value::Object(map) => map
                .iter()
                .map(|(key, member)| (Step::Member(key.as_str()), member))
                .collect(),
            Value::Array(elements) => elements
                .iter()
                .take(self.max_array_items)
                .map(|element| (Step::Item, element))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn fields(&self, samples: usize) -> Vec<Field> {
        self.nodes
            .iter()
            .skip(1)
            .map(|node| Field {
                pointer: node.pointer.clone(),
                types: node.kinds.names(),
                present: node.present,
                presence: share(node.present, samples),
                example: node.example.clone(),
            })
            .collect()
    }

    fn schema(&self) -> Value {
        // A child is always created after its parent, so going through the nodes backwards
        // builds every child's schema before the parent that embeds it, without recursion.
        let mut built = vec![Map::new(); self.nodes.len()];
        for id in (0..self.nodes.len()).rev() {
            built[id] = self.node_schema(id, &built);
        }

        let mut schema = Map::new();
        schema.insert("$schema".into(), SCHEMA_DRAFT.into());
        schema.extend(std::mem::take(&mut built[ROOT]));
        Value::Object(schema)
    }

    /// One node's schema, from the already built schemas of its children. No `format` and no
    /// `additionalProperties`: payloads gain fields over time, and the gateway asserts formats,
    /// so a guessed one would reject events that are fine.
    fn node_schema(&self, id: usize, built: &[Map<String, Value>]) -> Map<String, Value> {
        let node = &self.nodes[id];
        let mut schema = Map::new();
        schema.insert("type".into(), node.kinds.schema_type());

        if node.kinds.contains(Kind::Object) {
            let properties = node
                .properties
                .iter()
                .map(|&child| (self.nodes[child].key.clone(), built[child].clone().into()));
            let properties: Map<String, Value> = properties.collect();
            schema.insert("properties".into(), properties.into());

            let required = self.required_keys(node);
            if !required.is_empty() {
                schema.insert("required".into(), required.into());
            }
        }

        if let Some(item) = node.items {
            schema.insert("items".into(), built[item].clone().into());
        }
        schema
    }

    /// Keys present in every occurrence of the object, array elements included.
    fn required_keys(&self, node: &Node) -> Vec<String> {
        node.properties
            .iter()
            .map(|&child| &self.nodes[child])
            .filter(|child| child.member_count == node.object_count)
            .map(|child| child.key.clone())
            .collect()
    }

    /// Scalars and arrays outside arrays get a variable; objects do not, as their leaves do.
    fn is_mappable(&self, id: usize) -> bool {
        let kinds = self.nodes[id].kinds.without(Kind::Null);
        let object_only = kinds.single() == Some(Kind::Object);
        !object_only && !self.inside_array(id)
    }

    fn inside_array(&self, id: usize) -> bool {
        let mut current = id;
        while current != ROOT {
            if self.nodes[current].is_item {
                return true;
            }
            current = self.nodes[current].parent;
        }
        false
    }

    /// The unescaped reference tokens from the root down to `id`.
    fn keys_to(&self, id: usize) -> Vec<&str> {
        let mut keys = Vec::new();
        let mut current = id;
        while current != ROOT {
            keys.push(self.nodes[current].key.as_str());
            current = self.nodes[current].parent;
        }
        keys.reverse();
        keys
    }
}

/// RFC 6901, section 3: `~` is written `~0` and `/` is written `~1`, in that order.
fn escape_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn example_of(value: &Value) -> Option<Value> {
    match value {
        Value::String(text) => Some(Value::String(shortened(text))),
        Value::Bool(_) | Value::Number(_) => Some(value.clone()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn shortened(text: &str) -> String {
    match text.char_indices().nth(EXAMPLE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn share(present: usize, samples: usize) -> f64 {
    let ratio = present as f64 / samples as f64;
    (ratio * 1000.0).round() / 1000.0
}

/// The `mapping:` block: one variable per mappable field, in order of first appearance.
fn mapping_yaml(tree: &Tree, samples: usize, max_variables: usize) -> String {
    let mappable: Vec<usize> = (1..tree.nodes.len())
        .filter(|&id| tree.is_mappable(id))
        .collect();
    let listed = &mappable[..mappable.len().min(max_variables)];
    let paths: Vec<Vec<&str>> = listed.iter().map(|&id| tree.keys_to(id)).collect();
    let names = variable_names(&paths);

    // An empty block must still be a mapping: a bare `mapping:` would read as null.
    let mut yaml = String::from(if listed.is_empty() {
        "mapping: {}\n"
    } else {
        "mapping:\n"
    });
    for (&id, name) in listed.iter().zip(&names) {
        yaml.push_str(&variable_yaml(name, &tree.nodes[id], samples));
    }

    let unlisted = mappable.len() - listed.len();
    if unlisted > 0 {
        yaml.push_str(&format!("  # {unlisted} more fields not listed\n"));
    } else if mappable.is_empty() {
        yaml.push_str("  # no field outside an array to map\n");
    }
    yaml
}

fn variable_yaml(name: &str, node: &Node, samples: usize) -> String {
    let mut yaml = format!("  {name}:\n    pointer: {}\n", yaml_pointer(&node.pointer));
    if let Some(value_type) = node.kinds.mapping_type() {
        yaml.push_str(&format!("    type: {value_type}\n"));
    }

    // The mapping treats `null` as missing, so a field ever seen null is not required.
    if node.present == samples && !node.kinds.contains(Kind::Null) {
        yaml.push_str("    required: true\n");
    }
    yaml
}

/// A pointer as a YAML scalar: bare when it holds only characters that cannot mean anything
/// else in YAML, otherwise double-quoted with escapes that YAML and JSON read alike.
fn yaml_pointer(pointer: &str) -> String {
    let bare = pointer
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_.~-".contains(c));
    if bare {
        return pointer.to_string();
    }

    format!("\"{}\"", crate::config::env::escape_double_quoted(pointer))
}

/// One name per path of unescaped tokens: as short as possible, then made unique.
fn variable_names(paths: &[Vec<&str>]) -> Vec<String> {
    deduplicated(shortest_distinct_names(paths))
}

/// Names from each path's last token, lengthened with parent tokens only where two paths
/// would otherwise share a name and the path still has a parent to give.
fn shortest_distinct_names(paths: &[Vec<&str>]) -> Vec<String> {
    let mut lengths = vec![1; paths.len()];
    loop {
        let names: Vec<String> = paths
            .iter()
            .zip(&lengths)
            .map(|(path, &length)| name_from(&path[path.len().saturating_sub(length)..]))
            .collect();

        let mut uses: HashMap<&str, usize> = HashMap::new();
        for name in &names {
            *uses.entry(name.as_str()).or_default() += 1;
        }

        // Each round lengthens at least one path or ends, so the loop ends.
        let mut lengthened = false;
        for (index, path) in paths.iter().enumerate() {
            if uses[names[index].as_str()] > 1 && lengths[index] < path.len() {
                lengths[index] += 1;
                lengthened = true;
            }
        }
        if !lengthened {
            return names;
        }
    }
}

/// Appends `_2`, `_3`… to repeated names, skipping any suffixed name already in the list.
fn deduplicated(names: Vec<String>) -> Vec<String> {
    let wanted: HashSet<String> = names.iter().cloned().collect();
    let mut taken: HashSet<String> = HashSet::new();

    names
        .into_iter()
        .map(|name| {
            let unique = if taken.contains(&name) {
                first_free_suffix(&name, &wanted, &taken)
            } else {
                name
            };
            taken.insert(unique.clone());
            unique
        })
        .collect()
}

fn first_free_suffix(name: &str, wanted: &HashSet<String>, taken: &HashSet<String>) -> String {
    let mut number = 2;
    loop {
        let candidate = format!("{name}_{number}");
        if !wanted.contains(&candidate) && !taken.contains(&candidate) {
            return candidate;
        }
        number += 1;
    }
}

/// A variable name from some trailing tokens of a pointer. Variables become Rhai variables,
/// and workflow validation accepts only `[A-Za-z_][A-Za-z0-9_]*` outside the reserved words.
fn name_from(tokens: &[&str]) -> String {
    let joined: Vec<String> = tokens.iter().map(|token| snake_case(token)).collect();
    let name = collapse_underscores(&joined.join("_"));

    let name = if name.is_empty() {
        "field".to_string()
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("field_{name}")
    } else {
        name
    };

    let name_str = name.as_str();
    if RHAI_RESERVED_WORDS.contains(&name_str) || RESERVED_NAMES.contains(&name_str) {
        format!("{name}_value")
    } else {
        name
    }
}

/// Lowercase ASCII words joined by `_`: `orderId` → `order_id`, `X-Foo` → `x_foo`,
/// `HTTPServer` → `http_server`. Anything else, non-ASCII included, becomes `_`.
fn snake_case(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    let mut out = String::with_capacity(token.len());

    for (index, &c) in chars.iter().enumerate() {
        if starts_word(&chars, index) {
            out.push('_');
        }
        out.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        });
    }
    out
}

/// Whether the capital at `index` begins a new word: after a lowercase letter (`orderId`),
/// or ending a run of capitals or digits when a lowercase letter follows (`HTTPServer`,
/// `sha256Hash`). `userID` and `item3D` keep their tail together.
fn starts_word(chars: &[char], index: usize) -> bool {
    if index == 0 || !chars[index].is_ascii_uppercase() {
        return false;
    }

    let before = chars[index - 1];
    let lowercase_after = chars
        .get(index + 1)
        .is_some_and(|after| after.is_ascii_lowercase());
    before.is_ascii_lowercase() || (before.is_ascii_alphanumeric() && lowercase_after)
}

/// Runs of `_` become one, and none is left at either end.
fn collapse_underscores(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let repeated = c == '_' && (out.is_empty() || out.ends_with('_'));
        if !repeated {
            out.push(c);
        }
    }
    out.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[Value]) -> Discovery {
        discover(events, &DiscoveryLimits::default())
    }

    fn field<'a>(discovery: &'a Discovery, pointer: &str) -> &'a Field {
        discovery
            .fields
            .iter()
            .find(|field| field.pointer == pointer)
            .unwrap_or_else(|| panic!("no field {pointer}"))
    }

    fn pointers(discovery: &Discovery) -> Vec<&str> {
        discovery
            .fields
            .iter()
            .map(|field| field.pointer.as_str())
            .collect()
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("test json parses")
    }

    /// The mapping block parsed back, as the workflow loader would read it.
    fn parsed_mapping(discovery: &Discovery) -> Value {
        let document: Value = serde_yaml_ng::from_str(&discovery.mapping).expect("yaml parses");
        document["mapping"].clone()
    }

    fn mapped_names(discovery: &Discovery) -> Vec<String> {
        match parsed_mapping(discovery) {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("mapping is not a map: {other}"),
        }
    }

    #[test]
    fn reports_types_and_presence_over_three_events_with_one_missing_field() {
        let events = [
            json!({"id": "a1", "note": "first", "amount": 5}),
            json!({"id": "a2", "amount": null}),
            json!({"id": "a3", "note": 7, "amount": 6}),
        ];
        let discovery = run(&events);

        assert_eq!(discovery.samples, 3);
        assert_eq!(pointers(&discovery), ["/id", "/note", "/amount"]);

        let note = field(&discovery, "/note");
        assert_eq!(note.types, ["integer", "string"]);
        assert_eq!(note.present, 2);
        assert_eq!(note.presence, 0.667);
        assert_eq!(note.example, Some(json!("first")));

        let amount = field(&discovery, "/amount");
        assert_eq!(amount.types, ["null", "integer"]);
        assert_eq!(amount.present, 3);
        assert_eq!(amount.presence, 1.0);
        assert_eq!(amount.example, Some(json!(5)));
        assert_eq!(discovery.schema["required"], json!(["id", "amount"]));
    }

    #[test]
    fn merges_array_elements_under_index_zero() {
        let events = [json!({
            "items": [{"sku": "A"}, {"sku": "B", "qty": 2}, {"sku": "C", "qty": 1.5}],
            "total": 3
        })];
        let discovery = run(&events);

        assert_eq!(
            pointers(&discovery),
            [
                "/items",
                "/items/0",
                "/items/0/sku",
                "/items/0/qty",
                "/total"
            ]
        );
        assert_eq!(field(&discovery, "/items").types, ["array"]);
        assert_eq!(field(&discovery, "/items/0").types, ["object"]);
        assert_eq!(
            field(&discovery, "/items/0/qty").types,
            ["integer", "number"]
        );
        assert_eq!(field(&discovery, "/items/0/sku").present, 1);
        assert_eq!(field(&discovery, "/items").example, None);

        let items = &discovery.schema["properties"]["items"];
        assert_eq!(items["type"], "array");
        assert_eq!(items["items"]["properties"]["qty"]["type"], "number");
        assert_eq!(items["items"]["required"], json!(["sku"]));
    }

    #[test]
    fn tells_integers_from_numbers_at_any_size() {
        let events = [parse(
            r#"{"small": 3, "negative": -4, "big": 123456789012345678901234567890,
                "whole_float": 1.0, "exponent": 1e3, "fraction": 0.25}"#,
        )];
        let discovery = run(&events);

        for pointer in ["/small", "/negative", "/big"] {
            assert_eq!(field(&discovery, pointer).types, ["integer"], "{pointer}");
        }
        for pointer in ["/whole_float", "/exponent", "/fraction"] {
            assert_eq!(field(&discovery, pointer).types, ["number"], "{pointer}");
        }
        let big = field(&discovery, "/big")
            .example
            .as_ref()
            .map(Value::to_string);
        assert_eq!(big.as_deref(), Some("123456789012345678901234567890"));
        assert_eq!(discovery.schema["properties"]["big"]["type"], "integer");
    }

    #[test]
    fn escapes_tilde_and_slash_in_keys() {
        let events = [json!({"a/b": {"c~d": 1}, "~1": true})];
        let discovery = run(&events);

        assert_eq!(pointers(&discovery), ["/a~1b", "/a~1b/c~0d", "/~01"]);
        let properties = &discovery.schema["properties"];
        assert_eq!(properties["a/b"]["properties"]["c~d"]["type"], "integer");
        assert_eq!(properties["~1"]["type"], "boolean");
    }

    #[test]
    fn requires_keys_present_in_every_occurrence_of_their_object() {
        let events = [
            json!({"customer": {"email": "a@x", "phone": "1"}}),
            json!({"id": 1}),
            json!({"customer": {"email": "b@x"}}),
        ];
        let discovery = run(&events);

        let customer = &discovery.schema["properties"]["customer"];
        assert_eq!(customer["required"], json!(["email"]));
        assert!(discovery.schema.get("required").is_none());
        assert_eq!(field(&discovery, "/customer/email").present, 2);

        let mapping = parsed_mapping(&discovery);
        assert!(mapping["email"].get("required").is_none());
    }

    #[test]
    fn omits_required_when_no_key_is_always_present() {
        let events = [json!({"a": 1}), json!({"b": 2})];
        let discovery = run(&events);

        assert_eq!(discovery.schema["type"], "object");
        assert!(discovery.schema.get("required").is_none());
        assert_eq!(discovery.schema["properties"]["b"]["type"], "integer");
    }

    #[test]
    fn stops_listing_at_max_fields() {
        let limits = DiscoveryLimits {
            max_fields: 3,
            ..DiscoveryLimits::default()
        };
        let events = [
            json!({"a": 1, "b": {"c": 2, "d": 3}}),
            json!({"a": 5, "e": 4}),
        ];
        let discovery = discover(&events, &limits);

        assert!(discovery.fields_truncated);
        assert_eq!(pointers(&discovery), ["/a", "/b", "/b/c"]);
        assert_eq!(field(&discovery, "/a").present, 2);
        assert!(discovery.schema["properties"].get("e").is_none());
    }

    #[test]
    fn lists_the_node_at_max_depth_without_descending() {
        let limits = DiscoveryLimits {
            max_depth: 2,
            ..DiscoveryLimits::default()
        };
        let events = [json!({"a": {"b": {"c": 1}}, "x": {"y": 2}})];
        let discovery = discover(&events, &limits);

        assert_eq!(pointers(&discovery), ["/a", "/a/b", "/x", "/x/y"]);
        assert_eq!(field(&discovery, "/a/b").types, ["object"]);
        assert!(discovery.depth_truncated);
        assert!(!discovery.fields_truncated);
    }

    #[test]
    fn survives_nesting_far_past_the_depth_limit() {
        let mut event = json!([]);
        for _ in 0..5000 {
            event = Value::Array(vec![event]);
        }

        let limits = DiscoveryLimits {
            max_depth: usize::MAX,
            ..DiscoveryLimits::default()
        };
        let discovery = discover(std::slice::from_ref(&event), &limits);

        assert_eq!(discovery.fields.len(), DEPTH_CEILING);
        assert!(discovery.depth_truncated);
        let deepest = "/0".repeat(DEPTH_CEILING);
        assert_eq!(
            discovery.fields.last().map(|f| f.pointer.as_str()),
            Some(&*deepest)
        );

        // Dropping a value this deep recurses in serde_json; unwind it by hand.
        let mut unwound = event;
        while let Value::Array(mut inner) = unwound {
            unwound = inner.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn examines_only_max_array_items_per_array() {
        let limits = DiscoveryLimits {
            max_array_items: 2,
            ..DiscoveryLimits::default()
        };
        let events = [json!({"list": [{"a": 1}, {"b": 2}, {"c": 3}]})];
        let discovery = discover(&events, &limits);

        assert_eq!(
            pointers(&discovery),
            ["/list", "/list/0", "/list/0/a", "/list/0/b"]
        );
    }

    #[test]
    fn names_grow_with_parent_segments_only_when_needed() {
        let events = [json!({
            "customer": {"email": "a@x", "orderId": "o1"},
            "billing": {"email": "b@x"},
            "meta": {"X-Request-Id": "r", "HTTPStatus": 200}
        })];
        let discovery = run(&events);

        assert_eq!(
            mapped_names(&discovery),
            [
                "customer_email",
                "order_id",
                "billing_email",
                "x_request_id",
                "http_status"
            ]
        );
    }

    #[test]
    fn keywords_and_repeats_get_suffixes() {
        let events = [json!({
            "let": 1,
            "event": "push",
            "type": "t",
            "a": {"2fa": true, "__": 0, "é": "x"},
            "b": {"__": 1},
            "x_y": 1,
            "x": {"y": 2},
            "y": 3,
        })];
        let discovery = run(&events);

        assert_eq!(
            mapped_names(&discovery),
            [
                "let_value",
                "event_value",
                "type",
                "field_2fa",
                "a",
                "a_2",
                "b",
                "x_y",
                "x_y_2",
                "y",
            ]
        );
    }

    #[test]
    fn numbered_suffixes_skip_names_taken_later() {
        let names = ["a", "a", "a_2"].map(String::from).to_vec();
        assert_eq!(deduplicated(names), ["a", "a_3", "a_2"]);
    }

    #[test]
    fn writes_the_mapping_skeleton_in_workflow_syntax() {
        let events = [
            json!({"id": "o1", "customer": {"email": "a@x"}, "tags": ["new"], "n": 1}),
            json!({"id": "o2", "customer": {"email": null}, "tags": [], "n": 2.5}),
        ];
        let discovery = run(&events);

        let expected = "\
mapping:
  id:
    pointer: /id
    type: string
    required: true
  email:
    pointer: /customer/email
    type: string
  tags:
    pointer: /tags
    required: true
  n:
    pointer: /n
    type: number
    required: true
";
        assert_eq!(discovery.mapping, expected);
    }

    #[test]
    fn notes_variables_beyond_the_limit() {
        let limits = DiscoveryLimits {
            max_mapping_variables: 2,
            ..DiscoveryLimits::default()
        };
        let events = [json!({"a": 1, "b": 2, "c": 3, "d": 4})];
        let discovery = discover(&events, &limits);

        assert_eq!(mapped_names(&discovery), ["a", "b"]);
        assert!(discovery
            .mapping
            .ends_with("  # 2 more fields not listed\n"));
    }

    #[test]
    fn quoted_pointers_parse_back_exactly() {
        let key = "a b:c#\"q\"\\ é\u{2028}\t~/";
        let events = [json!({ "outer": { key: 1 }, "plain-key_1.x": 2 })];
        let discovery = run(&events);
        let mapping = parsed_mapping(&discovery);

        let tricky = "/outer/a b:c#\"q\"\\ é\u{2028}\t~0~1";
        assert_eq!(field(&discovery, tricky).types, ["integer"]);
        assert_eq!(mapping["a_b_c_q"]["pointer"], tricky);
        assert_eq!(mapping["plain_key_1_x"]["pointer"], "/plain-key_1.x");
        assert!(discovery.mapping.contains("pointer: /plain-key_1.x\n"));
    }

    #[test]
    fn zero_events_give_a_bare_schema_and_a_comment() {
        let discovery = run(&[]);

        assert_eq!(discovery.samples, 0);
        assert!(discovery.fields.is_empty());
        assert!(!discovery.fields_truncated);
        assert_eq!(discovery.schema, json!({"$schema": SCHEMA_DRAFT}));
        assert!(discovery.mapping.starts_with("# no sample events"));
        assert_eq!(discovery.mapping.lines().count(), 1);
    }

    #[test]
    fn top_level_arrays_and_scalars_shape_the_root_schema() {
        let events = [json!([{"id": 1}, {"id": 2, "ok": true}]), json!("ping")];
        let discovery = run(&events);

        assert_eq!(pointers(&discovery), ["/0", "/0/id", "/0/ok"]);
        assert_eq!(field(&discovery, "/0").present, 1);
        assert_eq!(field(&discovery, "/0").presence, 0.5);
        assert_eq!(discovery.schema["type"], json!(["string", "array"]));
        assert_eq!(discovery.schema["items"]["required"], json!(["id"]));
        assert_eq!(
            discovery.mapping,
            "mapping: {}\n  # no field outside an array to map\n"
        );
        assert_eq!(parsed_mapping(&discovery), json!({}));
    }

    #[test]
    fn cuts_long_example_strings() {
        let long = "é".repeat(130);
        let events = [json!({"text": long, "gap": null}), json!({"gap": "later"})];
        let discovery = run(&events);

        let example = field(&discovery, "/text").example.clone();
        let expected = format!("{}…", "é".repeat(EXAMPLE_MAX_CHARS));
        assert_eq!(example, Some(Value::String(expected)));
        assert_eq!(field(&discovery, "/gap").example, Some(json!("later")));
    }

    #[test]
    fn schema_lists_several_types_in_fixed_order() {
        let events = [
            json!({"v": "s"}),
            json!({"v": 1}),
            json!({"v": null}),
            json!({"v": 2.5}),
        ];
        let discovery = run(&events);

        let v = &discovery.schema["properties"]["v"];
        assert_eq!(v["type"], json!(["null", "number", "string"]));
        assert_eq!(discovery.schema["$schema"], SCHEMA_DRAFT);
        assert!(discovery.schema.get("additionalProperties").is_none());
    }

    #[test]
    fn snake_case_splits_words_and_drops_other_characters() {
        let cases = [
            ("orderId", "order_id"),
            ("X-Foo", "x_foo"),
            ("userID", "user_id"),
            ("sha256Hash", "sha256_hash"),
            ("item3D", "item3d"),
            ("café crème", "caf_cr_me"),
            ("__a--b__", "a_b"),
        ];
        for (token, expected) in cases {
            assert_eq!(name_from(&[token]), expected, "{token}");
        }
        assert_eq!(name_from(&["2024"]), "field_2024");
        assert_eq!(name_from(&["日本"]), "field");
        assert_eq!(name_from(&["parent", "this"]), "parent_this");
    }
}
