//! Results for the reliability report (`scripts/report.sh` renders them into
//! `docs/reliability.md`): each fault or hostile-input case records what was tried and what
//! came of it, as one JSON line in `$MESH_REPORT_DIR/<area>.jsonl`. Without that variable
//! (a plain `cargo test`) nothing is written.

use std::io::Write;

/// Records one case and returns `passed`, so a test can assert on the value it reported:
/// `assert!(report::verdict("data path", "host killed", failed <= 20, figures), "...")`.
///
/// `area` groups rows ("raft", "data path", "hostile input", "security"), `case` names the
/// fault or input, and `outcome` gives the figures ("3 of 12,040 requests failed; bound 40").
pub fn verdict(area: &str, case: &str, passed: bool, outcome: &str) -> bool {
    let Some(dir) = std::env::var_os("MESH_REPORT_DIR") else {
        return passed;
    };
    let line = serde_json::json!({
        "area": area,
        "case": case,
        "passed": passed,
        "outcome": outcome,
    });
    let file_name = format!(
        "{}.jsonl",
        area.replace(|c: char| !c.is_alphanumeric(), "-")
    );
    let path = std::path::Path::new(&dir).join(file_name);
    // Several test binaries append at once; one write per line keeps lines whole.
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(format!("{line}\n").as_bytes())
    });
    if let Err(err) = written {
        eprintln!("report: cannot append to {}: {err}", path.display());
    }
    passed
}
