//! How meshctl prints listings: aligned columns for people, JSON for programs.

use serde::Serialize;

/// Output format of a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header row.
    #[default]
    Table,
    /// Pretty-printed JSON.
    Json,
}

/// Prints `items` as JSON, or as a table of `headers` and the rows `row` makes of each item.
pub fn print_list<T: Serialize>(
    format: Format,
    items: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(items).expect("listings serialize")
        ),
        Format::Table => print!(
            "{}",
            table(headers, &items.iter().map(row).collect::<Vec<_>>())
        ),
    }
}

/// The first 12 characters of a service, task or network ID, as listings show them.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Prints one value as JSON, or as `key: value` lines.
pub fn print_record<T: Serialize>(format: Format, item: &T, lines: &[(&str, String)]) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(item).expect("records serialize")
        ),
        Format::Table => {
            let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (key, value) in lines {
                println!("{key:<width$}  {value}");
            }
        }
    }
}

/// Renders rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let line: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", line.join("  ").trim_end())
    };
    let mut out = render(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&render(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let out = table(
            &["NAME", "HOSTS"],
            &[
                vec!["demo".into(), "5".into()],
                vec!["a-long-name".into(), "12".into()],
            ],
        );
        assert_eq!(out, "NAME         HOSTS\ndemo         5\na-long-name  12\n");
    }
}
