//! `${NAME}` and `${NAME:-default}` expansion in configuration text.
//!
//! Expansion happens on the file's text before YAML parsing, so a placeholder works in any
//! position, numbers and booleans included. The value is inserted so that YAML reads back
//! exactly the value: escaped inside a double-quoted string, with `'` doubled inside a
//! single-quoted one, and as a quoted string when it stands alone unquoted but would otherwise
//! be misread (`#`, `: ` and the like). A value that cannot be inserted faithfully is an error,
//! never a silent change to a secret. `$${` stands for a literal `${`. Lines whose first
//! non-blank character is `#` are comments and are left alone.

/// Where in a YAML line a placeholder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Plain,
    DoubleQuoted,
    SingleQuoted,
}

/// Expands every placeholder in `text`, reading variables through `lookup`.
///
/// Returns the expanded text and every problem, each as `(line, message)` with 1-based line
/// numbers. A placeholder with a problem expands to an empty string, so that the rest of the
/// file can still be checked.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> (String, Vec<(usize, String)>) {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();

    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        for message in expand_line(line, &lookup, &mut out) {
            problems.push((index + 1, message));
        }
    }
    (out, problems)
}

fn expand_line(
    line: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut context = Context::Plain;
    let mut rest = line;

    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                problems.push("unterminated ${ placeholder".to_string());
                out.push_str(rest);
                break;
            };
            let standalone = context == Context::Plain && stands_alone(out, &after[end + 1..]);
            match resolve(&after[..end], lookup)
                .and_then(|value| encode(&value, context, standalone))
            {
                Ok(encoded) => out.push_str(&encoded),
                Err(message) => problems.push(message),
            }
            rest = &after[end + 1..];
            continue;
        }

        let c = rest.chars().next().unwrap_or_default();
        let width = c.len_utf8();
        context = next_context(context, rest, out);
        // An escaped character inside double quotes is copied whole, quote included.
        let copied = if context == Context::DoubleQuoted && rest.starts_with('\\') {
            2
        } else {
            width
        };
        let copied = copied.min(rest.len());
        out.push_str(&rest[..copied]);
        rest = &rest[copied..];
    }
    problems
}

/// The quoting context after the character at the start of `rest`. A quote opens a string
/// only where a YAML scalar can begin, so the apostrophe in `it's` is just a character.
fn next_context(context: Context, rest: &str, before: &str) -> Context {
    match (context, rest.as_bytes()[0]) {
        (Context::Plain, b'"') if scalar_starts_here(before) => Context::DoubleQuoted,
        (Context::Plain, b'\'') if scalar_starts_here(before) => Context::SingleQuoted,
        (Context::DoubleQuoted, b'"') => Context::Plain,
        // `''` inside single quotes is an escaped quote: the second one reopens the string.
        (Context::SingleQuoted, b'\'') => Context::Plain,
        (context, _) => context,
    }
}

fn scalar_starts_here(before: &str) -> bool {
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let preceding = before[line_start..].trim_end();
    preceding.is_empty() || preceding.ends_with([':', '-', '[', ',', '{', '\''])
}

/// Whether an unquoted placeholder is a whole YAML value: after `key: ` or `- `, and
/// followed only by blanks or a comment.
fn stands_alone(before: &str, after: &str) -> bool {
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let preceding = before[line_start..].trim_end();
    let opens_value = preceding.ends_with([':', '-', '[', ',']);
    let following = after.trim_start();
    let closes_value = following.is_empty()
        || following.starts_with('#')
        || following.starts_with(']')
        || following.starts_with(',');
    opens_value && closes_value
}

/// The text that makes YAML read back exactly `value` in `context`.
fn encode(value: &str, context: Context, standalone: bool) -> Result<String, String> {
    match context {
        Context::DoubleQuoted => Ok(escape_double_quoted(value)),
        Context::SingleQuoted if value.contains(['\n', '\r']) => {
            Err("a value with line breaks cannot go in single quotes; use double quotes".into())
        }
        Context::SingleQuoted => Ok(value.replace('\'', "''")),
        Context::Plain if is_plain_safe(value) => Ok(value.to_string()),
        Context::Plain if standalone => Ok(format!("\"{}\"", escape_double_quoted(value))),
        Context::Plain => Err(
            "the value has characters YAML would misread here; put the whole value in double quotes".into(),
        ),
    }
}

/// Values YAML reads back unchanged without quotes: no indicators, no `: ` or ` #`.
fn is_plain_safe(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'+' | b'@' | b'=')
        })
        && !value.starts_with(['-', ':', '@'])
        && !value.ends_with(':')
}

/// `value` escaped for the inside of a YAML double-quoted scalar, so that YAML reads back
/// exactly `value`. Also used to write YAML for authors (`authoring::fields`).
pub(crate) fn escape_double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape_in_yaml(c) => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Characters a YAML document may not hold raw: controls are outside YAML's printable set,
/// U+2028 and U+2029 are line breaks to YAML 1.1 parsers (libyaml among them) and would be
/// folded to spaces, U+FEFF is a byte order mark, and U+FFFE and U+FFFF are not characters.
/// All of them are below U+10000, so `\uXXXX` covers them.
fn must_escape_in_yaml(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '\u{FFFE}' | '\u{FFFF}'
        )
}

fn resolve(placeholder: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match placeholder.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (placeholder, None),
    };

    if !is_variable_name(name) {
        return Err(format!("{name:?} is not a valid environment variable name"));
    }

    // Shell semantics: `:-` also replaces a variable that is set but empty.
    match (lookup(name).filter(|value| !value.is_empty()), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
        )),
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some(r#"ab\x41 "q" #tail: 'x'"#.into()),
            "NUMBER" => Some("8".into()),
            _ => None,
        }
    }

    fn expanded(text: &str) -> String {
        let (out, problems) = expand(text, env);
        assert!(problems.is_empty(), "{problems:?}");
        out
    }

    fn read_back(text: &str) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&expanded(text)).unwrap()
    }

    #[test]
    fn expands_set_variables_defaults_and_escapes() {
        let text = "a: ${SET}\nb: ${UNSET:-fallback}\nc: ${EMPTY:-used}\nd: $${SET} $5\n";
        assert_eq!(
            expanded(text),
            "a: value\nb: fallback\nc: used\nd: ${SET} $5\n"
        );
    }

    #[test]
    fn values_with_yaml_syntax_are_read_back_exactly() {
        let tricky = env("TRICKY").unwrap();
        for text in [
            "k: \"${TRICKY}\"",
            "k: '${TRICKY}'",
            "k: ${TRICKY}",
            "k: ${TRICKY} # note",
            "k: [${TRICKY}]",
        ] {
            let value = read_back(text);
            let value = value["k"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value["k"][0].as_str().unwrap().to_string());
            assert_eq!(value, tricky, "{text}");
        }
        assert_eq!(
            read_back("k: ${NUMBER}")["k"].as_u64(),
            Some(8),
            "plain numbers stay numbers"
        );
        assert_eq!(
            read_back("k: \"x-${SET}-y\"")["k"].as_str(),
            Some("x-value-y")
        );
    }

    #[test]
    fn a_value_that_cannot_be_inserted_faithfully_is_an_error() {
        let (_, problems) = expand("url: http://${TRICKY}:80\n", env);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("double quotes"));
    }

    #[test]
    fn reports_every_unset_variable_with_its_line() {
        let (_, problems) = expand("a: ${ONE}\n# ${IGNORED}\nb: ${TWO}\n", env);
        let lines: Vec<usize> = problems.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, vec![1, 3]);
        assert!(problems[0].1.contains("ONE"));
    }

    #[test]
    fn rejects_malformed_placeholders() {
        assert!(!expand("a: ${NOT CLOSED\n", env).1.is_empty());
        assert!(!expand("a: ${1BAD}\n", env).1.is_empty());
    }
}
