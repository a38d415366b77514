//! Placement constraints, as `service create --constraint` takes them: `node.id`,
//! `node.hostname`, `node.role` and `node.labels.<key>`, compared with `==` or `!=`.

use std::fmt;

use thiserror::Error;

/// What a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// The node's ID (a full ID).
    Id,
    /// The node's name.
    Hostname,
    /// manager or worker.
    Role,
    /// An operator label.
    Label(String),
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The value must match.
    Eq,
    /// The value must not match (a missing label counts as not matching).
    Ne,
}

/// One parsed constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// What it looks at.
    pub field: Field,
    /// How it compares.
    pub op: Op,
    /// The value compared with.
    pub value: String,
}

/// Why a constraint expression was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConstraintError {
    /// Neither `==` nor `!=` found.
    #[error("constraint {0:?} has no == or !=; write it like node.labels.zone==east")]
    NoOperator(String),
    /// An unknown field.
    #[error("constraint {0:?} names an unknown field; use node.id, node.hostname, node.role or node.labels.KEY")]
    UnknownField(String),
    /// Empty value or label key.
    #[error("constraint {0:?} has an empty value or label key")]
    Empty(String),
    /// node.role compared with something that is not a role.
    #[error("constraint {0:?}: node.role is manager or worker")]
    BadRole(String),
}

impl Constraint {
    /// Parses `FIELD==VALUE` or `FIELD!=VALUE` (spaces around the operator are allowed).
    pub fn parse(text: &str) -> Result<Self, ConstraintError> {
        let (field, op, value) = if let Some((f, v)) = text.split_once("!=") {
            (f, Op::Ne, v)
        } else if let Some((f, v)) = text.split_once("==") {
            (f, Op::Eq, v)
        } else {
            return Err(ConstraintError::NoOperator(text.to_string()));
        };
        let (field, value) = (field.trim(), value.trim());
        if value.is_empty() {
            return Err(ConstraintError::Empty(text.to_string()));
        }
        let field = match field {
            "node.id" => Field::Id,
            "node.hostname" => Field::Hostname,
            "node.role" => {
                if !matches!(value, "manager" | "worker") {
                    return Err(ConstraintError::BadRole(text.to_string()));
                }
                Field::Role
            }
            other => match other.strip_prefix("node.labels.") {
                Some("") => return Err(ConstraintError::Empty(text.to_string())),
                Some(key) => Field::Label(key.to_string()),
                None => return Err(ConstraintError::UnknownField(text.to_string())),
            },
        };
        Ok(Constraint {
            field,
            op,
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match &self.field {
            Field::Id => "node.id".to_string(),
            Field::Hostname => "node.hostname".to_string(),
            Field::Role => "node.role".to_string(),
            Field::Label(key) => format!("node.labels.{key}"),
        };
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{field}{op}{}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_and_operator_parses_and_prints_back() {
        for text in [
            "node.id==abc",
            "node.hostname!=w1",
            "node.role==manager",
            "node.labels.zone==east",
            "node.labels.a.b!=c",
        ] {
            assert_eq!(Constraint::parse(text).unwrap().to_string(), text);
        }
        let spaced = Constraint::parse(" node.labels.zone == east ").unwrap();
        assert_eq!(spaced.field, Field::Label("zone".into()));
        assert_eq!(spaced.value, "east");
    }

    #[test]
    fn malformed_constraints_say_what_is_wrong() {
        assert!(matches!(
            Constraint::parse("node.labels.zone=east"),
            Err(ConstraintError::NoOperator(_))
        ));
        assert!(matches!(
            Constraint::parse("engine.labels.x==y"),
            Err(ConstraintError::UnknownField(_))
        ));
        assert!(matches!(
            Constraint::parse("node.labels.==y"),
            Err(ConstraintError::Empty(_))
        ));
        assert!(matches!(
            Constraint::parse("node.hostname=="),
            Err(ConstraintError::Empty(_))
        ));
        assert!(matches!(
            Constraint::parse("node.role==boss"),
            Err(ConstraintError::BadRole(_))
        ));
        assert!(Constraint::parse("x")
            .unwrap_err()
            .to_string()
            .contains("node.labels.zone==east"));
    }
}
