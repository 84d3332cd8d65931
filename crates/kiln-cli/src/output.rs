//! Output in the ochami convention: `-F table|json|json-pretty|yaml`.

use anyhow::Context as _;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
    JsonPretty,
    Yaml,
}

/// A value that can also be shown as a table.
pub(crate) trait Tabular {
    fn headers() -> &'static [&'static str];
    fn row(&self) -> Vec<String>;
}

pub(crate) fn print<T: Serialize>(format: OutputFormat, value: &T, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Table => table(),
        OutputFormat::Json => serde_json::to_string(value).context("encoding JSON")? + "\n",
        OutputFormat::JsonPretty => serde_json::to_string_pretty(value).context("encoding JSON")? + "\n",
        OutputFormat::Yaml => serde_yaml::to_string(value).context("encoding YAML")?,
    };
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`kiln node list | head`) is not an error worth a message.
    match stdout.write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

pub(crate) fn print_rows<T: Serialize + Tabular>(format: OutputFormat, rows: &[T]) -> anyhow::Result<()> {
    print(format, &rows, || table(T::headers(), rows.iter().map(Tabular::row).collect()))
}

pub(crate) fn print_one<T: Serialize + Tabular>(format: OutputFormat, value: &T) -> anyhow::Result<()> {
    print(format, value, || table(T::headers(), vec![value.row()]))
}

/// Left-aligned columns separated by two spaces, headers in capitals.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
    out
}

pub(crate) fn or_dash<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_columns() {
        let text = super::table(&["name", "nid"], vec![vec!["node01".into(), "1".into()], vec!["n".into(), "22".into()]]);
        expect_test::expect![[r#"
            NAME    NID
            node01  1
            n       22
        "#]]
        .assert_eq(&text);
    }
}
