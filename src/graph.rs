//! The pipeline graph as the SDK describes it: values built from chains of
//! operations, sent over the session as JSON. Pure data; evaluating it is
//! the solver's job.

use serde::Deserialize;

/// One builder call on a `Container`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContainerOp {
    From { address: String },
    WithExec { args: Vec<String> },
    WithEnvVariable { name: String, value: String },
    WithWorkdir { path: String },
}

/// A `Container` value: the operations that built it, oldest first.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerDef {
    pub ops: Vec<ContainerOp>,
}

/// Quotes argv for display the way a shell would accept it back.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sdk_ops() {
        let def: ContainerDef = serde_json::from_value(serde_json::json!({"ops": [
            {"op": "from", "address": "127.0.0.1:5000/busybox:latest"},
            {"op": "with_env_variable", "name": "A", "value": "1"},
            {"op": "with_workdir", "path": "/src"},
            {"op": "with_exec", "args": ["sh", "-c", "echo hi"]},
        ]}))
        .unwrap();
        assert_eq!(def.ops.len(), 4);
        assert_eq!(
            def.ops[3],
            ContainerOp::WithExec {
                args: vec!["sh".into(), "-c".into(), "echo hi".into()]
            }
        );
    }

    #[test]
    fn unknown_ops_are_rejected() {
        let r: Result<ContainerDef, _> =
            serde_json::from_value(serde_json::json!({"ops": [{"op": "teleport"}]}));
        assert!(r.is_err());
    }

    #[test]
    fn shell_words_quotes_what_needs_it() {
        let args: Vec<String> = ["sh", "-c", "echo 'hi' $X", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_words(&args), r#"sh -c 'echo '\''hi'\'' $X' ''"#);
    }
}
