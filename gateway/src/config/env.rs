//! `${NAME}` and `${NAME:-default}` expansion in configuration text.
//!
//! Expansion happens on the file's text before YAML parsing, so a placeholder works in any
//! position, numbers and booleans included. `$${` stands for a literal `${`. Lines whose first
//! non-blank character is `#` are YAML comments and are left alone, so a commented-out example
//! never demands a variable.

/// Expands every placeholder in `text`, reading variables through `lookup`.
///
/// Returns every problem at once, each as `(line, message)`, with 1-based line numbers.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, String)>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();

    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        if let Err(message) = expand_line(line, &lookup, &mut out) {
            problems.push((index + 1, message));
        }
    }

    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn expand_line(
    line: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), String> {
    let mut rest = line;

    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];

        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated ${ placeholder".to_string())?;
            out.push_str(&resolve(&after[..end], lookup)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }

    out.push_str(rest);
    Ok(())
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
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_defaults_and_escapes() {
        let text = "a: ${SET}\nb: ${UNSET:-fallback}\nc: ${EMPTY:-used}\nd: $${SET} $5\n";
        let expanded = expand(text, env).unwrap();
        assert_eq!(expanded, "a: value\nb: fallback\nc: used\nd: ${SET} $5\n");
    }

    #[test]
    fn reports_every_unset_variable_with_its_line() {
        let problems = expand("a: ${ONE}\n# ${IGNORED}\nb: ${TWO}\n", env).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, vec![1, 3]);
        assert!(problems[0].1.contains("ONE"));
    }

    #[test]
    fn rejects_malformed_placeholders() {
        assert!(expand("a: ${NOT CLOSED\n", env).is_err());
        assert!(expand("a: ${1BAD}\n", env).is_err());
    }
}
