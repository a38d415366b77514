//! Renders the reliability report: reads the JSON lines that `report::verdict` (and
//! `scripts/fuzz.sh`) wrote under a directory and prints a Markdown table per area.
//!
//! Usage: `reliability-report <results dir>` (scripts/report.sh runs it and adds the header).

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::Value;

/// Areas in the order the report shows them; others follow alphabetically.
const AREAS: [&str; 4] = ["raft", "data path", "hostile input", "security"];

struct Row {
    case: String,
    passed: bool,
    outcome: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir] = args.as_slice() else {
        eprintln!("usage: reliability-report <results dir>");
        return ExitCode::from(2);
    };
    let mut areas: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!("reliability-report: cannot read {dir}: {err}; run scripts/report.sh, which fills it");
            return ExitCode::FAILURE;
        }
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
    {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            let row: Value = match serde_json::from_str(line) {
                Ok(row) => row,
                Err(err) => {
                    eprintln!(
                        "reliability-report: {}:{}: {err}",
                        path.display(),
                        number + 1
                    );
                    return ExitCode::FAILURE;
                }
            };
            let text = |key: &str| row[key].as_str().unwrap_or_default().to_string();
            areas.entry(text("area")).or_default().push(Row {
                case: text("case"),
                passed: row["passed"].as_bool().unwrap_or(false),
                outcome: text("outcome"),
            });
        }
    }
    let mut order: Vec<&String> = areas.keys().collect();
    order.sort_by_key(|area| {
        (
            AREAS.iter().position(|a| a == area).unwrap_or(AREAS.len()),
            area.as_str(),
        )
    });
    let total: usize = areas.values().map(Vec::len).sum();
    let failed: usize = areas.values().flatten().filter(|r| !r.passed).count();
    println!("{total} cases, {failed} failed.\n");
    for area in order {
        let mut rows: Vec<&Row> = areas[area].iter().collect();
        rows.sort_by(|a, b| a.case.cmp(&b.case));
        println!("## {}\n", capitalized(area));
        println!("| Case | Outcome | Result |\n|---|---|---|");
        for row in rows {
            println!(
                "| {} | {} | {} |",
                cell(&row.case),
                cell(&row.outcome),
                if row.passed { "pass" } else { "**FAIL**" }
            );
        }
        println!();
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Keeps a value inside its table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
