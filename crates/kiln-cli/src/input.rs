//! Input data in the ochami convention: `-f json|yaml -d @FILE | - | 'inline text'`.

use std::io::Read as _;

use anyhow::{Context as _, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InputFormat {
    Json,
    Yaml,
}

/// Reads `data` (a file after `@`, standard input for `-`, or the text itself) and parses it
/// in `format` into JSON, which is what the API takes.
pub(crate) fn read_document(format: InputFormat, data: &str) -> anyhow::Result<serde_json::Value> {
    let (text, source) = if let Some(path) = data.strip_prefix('@') {
        (std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?, path.to_owned())
    } else if data == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
        (text, "standard input".to_owned())
    } else {
        (data.to_owned(), "the -d argument".to_owned())
    };
    if text.trim().is_empty() {
        bail!("{source} is empty");
    }
    match format {
        InputFormat::Json => serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON")),
        InputFormat::Yaml => {
            let value: serde_yaml::Value = serde_yaml::from_str(&text).with_context(|| format!("{source} is not valid YAML"))?;
            serde_json::to_value(value).with_context(|| format!("{source} cannot be expressed as JSON"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_the_same_document() {
        let yaml = read_document(InputFormat::Yaml, "- name: a\n  nid: 1\n").unwrap();
        let json = read_document(InputFormat::Json, r#"[{"name": "a", "nid": 1}]"#).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn malformed_input_is_named() {
        let error = read_document(InputFormat::Yaml, "- name: [unclosed\n").unwrap_err();
        assert!(format!("{error:#}").starts_with("the -d argument is not valid YAML"), "{error:#}");
        let error = read_document(InputFormat::Json, "{").unwrap_err();
        assert!(format!("{error:#}").starts_with("the -d argument is not valid JSON"), "{error:#}");
        assert!(read_document(InputFormat::Json, "@/nonexistent/file").is_err());
    }
}
