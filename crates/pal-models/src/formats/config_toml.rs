//! Config files in TOML (model configs, curricula, probe suites): parsed into their structs, which
//! refuse keys they do not know, with errors that name the key, its line and the table it is in.

use serde::de::DeserializeOwned;

/// Parses a config from TOML `text`. On error, the message is toml's (the line and the key or
/// value) followed by the table the offending key sits in, e.g. `in table encoders[0].lal`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        // An error on a whole inline table (an internally tagged enum's) spans from its `{`:
        // the table meant is that one.
        let table = e.span().map(|span| {
            let inside = text[span.start..].starts_with('{');
            table_at(text, span.start + usize::from(inside))
        });
        match table {
            Some(t) if !t.is_empty() => format!("{}\nin table {t}", e.to_string().trim_end()),
            _ => e.to_string(),
        }
    })
}

/// The path of the table that byte `offset` of `text` lies in: the last `[header]` or
/// `[[array]]` (with its index) before it, then the inline tables (`key = { ... }`) open on its
/// line.
pub fn table_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let mut header = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    for line in before[..line_start].lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim().to_string();
            let count = arrays.entry(name.clone()).or_insert(0);
            header = format!("{name}[{count}]");
            *count += 1;
        } else if let Some(rest) = t.strip_prefix('[') {
            header = rest.split(']').next().unwrap_or("").trim().to_string();
        }
    }
    let mut path: Vec<String> = if header.is_empty() {
        vec![]
    } else {
        vec![header]
    };
    // Inline tables still open on this line: `key = {` (or `key = [{`) pushes `key`, `}` pops it.
    let mut open: Vec<String> = vec![];
    let line = &before[line_start..];
    for (i, c) in line.char_indices() {
        match c {
            '{' => {
                let before_brace = line[..i].trim_end();
                let before_brace = before_brace
                    .strip_suffix('[')
                    .map_or(before_brace, str::trim_end);
                let key = before_brace
                    .strip_suffix('=')
                    .unwrap_or("")
                    .trim_end()
                    .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
                    .next()
                    .unwrap_or("")
                    .to_string();
                open.push(key);
            }
            '}' => {
                open.pop();
            }
            _ => {}
        }
    }
    path.extend(open.into_iter().filter(|k| !k.is_empty()));
    path.join(".")
}

#[cfg(test)]
mod tests {
    use super::table_at;

    #[test]
    fn tables_are_found_from_headers_arrays_and_inline_tables() {
        let text = "seed = 1\n[llm]\npath = \"x\"\n[[encoders]]\nname = \"a\"\n[[encoders]]\nlal = { start = 1, strat = 2 }\n";
        assert_eq!(table_at(text, 3), "");
        assert_eq!(table_at(text, text.find("path").unwrap()), "llm");
        assert_eq!(table_at(text, text.find("name").unwrap()), "encoders[0]");
        assert_eq!(
            table_at(text, text.find("strat").unwrap()),
            "encoders[1].lal"
        );
        assert_eq!(table_at("a = { b = { c = 1 } }", 12), "a.b");
        assert_eq!(table_at("m = [{ p = 1, w = 2 }]", 14), "m");
    }
}
