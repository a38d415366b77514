//! nft rule texts: taken from `nft -a list ruleset` (exactly as nft prints them), or rebuilt
//! from the JSON for the common statements when only the JSON is at hand.

use std::collections::HashMap;

use serde_json::Value;

use super::nft::text_of;

/// Each rule's text and each base chain's declaration in `nft -a list ruleset` output, by the
/// location findings use ("nft inet filter input handle 7", "nft inet filter input policy").
pub fn nft_rule_texts(listing: &str) -> HashMap<String, String> {
    let mut texts = HashMap::new();
    let mut table: Option<(String, String)> = None;
    let mut chain: Option<String> = None;
    let mut in_block = false; // a set, map, flowtable or other named object
    let mut pending = String::new();
    for line in listing.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if in_block {
            in_block = line != "}";
            continue;
        }
        match (&table, &chain) {
            (None, _) => {
                if let ["table", family, name, ..] = words.as_slice() {
                    table = Some((family.to_string(), name.to_string()));
                }
            }
            (Some(_), None) => match words.as_slice() {
                ["chain", name, ..] => chain = Some(name.to_string()),
                ["}"] => table = None,
                [_, _, "{", ..] => in_block = true,
                _ => {}
            },
            (Some((family, name)), Some(chain_name)) => {
                let prefix = format!("nft {family} {name} {chain_name}");
                if line == "}" && pending.is_empty() {
                    chain = None;
                } else if line.starts_with("type ") && line.contains(" hook ") {
                    texts.insert(format!("{prefix} policy"), line.to_string());
                } else if let Some((rule, handle)) = line.rsplit_once(" # handle ") {
                    pending.push_str(rule.trim());
                    texts.insert(
                        format!("{prefix} handle {}", handle.trim()),
                        pending.clone(),
                    );
                    pending.clear();
                } else if !line.is_empty() {
                    pending.push_str(line);
                    pending.push(' ');
                }
            }
        }
    }
    texts
}

/// A statement in nft's syntax, for rules whose text `nft -a list ruleset` did not give.
pub(crate) fn render(expr: &Value) -> String {
    let Some((key, value)) = expr.as_object().and_then(|o| o.iter().next()) else {
        return expr.to_string();
    };
    match key.as_str() {
        "match" => render_match(value),
        "accept" | "drop" | "reject" | "return" | "continue" | "counter" | "log" | "notrack" => {
            key.clone()
        }
        "jump" | "goto" => format!("{key} {}", text_of(value, "target")),
        "limit" => format!(
            "limit rate {}/{}",
            value.get("rate").unwrap_or(&Value::Null),
            text_of(value, "per")
        ),
        "vmap" => format!(
            "{} vmap {}",
            render_value(&value["key"]),
            render_value(&value["data"])
        ),
        _ => expr.to_string(),
    }
}

pub(crate) fn render_match(m: &Value) -> String {
    let op = match text_of(m, "op") {
        "==" | "in" => String::new(),
        op => format!("{op} "),
    };
    format!(
        "{} {op}{}",
        render_value(&m["left"]),
        render_value(&m["right"])
    )
}

fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(render_value).collect();
            parts.join(",")
        }
        Value::Object(o) => match o.iter().next() {
            Some((k, v)) if k == "payload" => {
                format!("{} {}", text_of(v, "protocol"), text_of(v, "field"))
            }
            Some((k, v)) if k == "meta" => match text_of(v, "key") {
                key @ ("iifname" | "oifname" | "iif" | "oif") => key.to_string(),
                key => format!("meta {key}"),
            },
            Some((k, v)) if k == "ct" => format!("ct {}", text_of(v, "key")),
            Some((k, v)) if k == "set" => {
                let items: Vec<String> = v
                    .as_array()
                    .map_or(vec![], |a| a.iter().map(render_value).collect());
                format!("{{ {} }}", items.join(", "))
            }
            Some((k, v)) if k == "range" => {
                format!("{}-{}", render_value(&v[0]), render_value(&v[1]))
            }
            Some((k, v)) if k == "prefix" => format!("{}/{}", text_of(v, "addr"), v["len"]),
            Some((k, v)) if k == "accept" || k == "drop" || k == "return" => {
                let _ = v;
                k.clone()
            }
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}
