//! JSON patches (RFC 6902), as `baremetal node set` and `unset` send them:
//! `[{"op": "add", "path": "/properties/cpus", "value": 4}, {"op": "remove", "path": "/extra/a"}]`.
//! `add`, `replace`, `remove` and `test` are applied to a document in order, all or none.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PatchOperation {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
    Test { path: String, value: Value },
}

impl PatchOperation {
    pub fn path(&self) -> &str {
        match self {
            PatchOperation::Add { path, .. }
            | PatchOperation::Replace { path, .. }
            | PatchOperation::Remove { path }
            | PatchOperation::Test { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("'{path}' is not a JSON pointer: it must start with '/'")]
    NotAPointer { path: String },
    #[error("'{path}': nothing there to {op}")]
    Missing { path: String, op: &'static str },
    #[error("'{path}': its parent is not an object")]
    NotAnObject { path: String },
    #[error("'{path}': the test failed")]
    TestFailed { path: String },
}

/// `/a/b~1c` into `["a", "b/c"]`.
fn tokens(path: &str) -> Result<Vec<String>, PatchError> {
    let rest = path.strip_prefix('/').ok_or_else(|| PatchError::NotAPointer { path: path.to_owned() })?;
    Ok(rest.split('/').map(|token| token.replace("~1", "/").replace("~0", "~")).collect())
}

/// The object holding the last token of `path`, and that token.
fn parent<'a>(document: &'a mut Value, path: &str) -> Result<(&'a mut serde_json::Map<String, Value>, String), PatchError> {
    let mut tokens = tokens(path)?;
    let last = tokens.pop().expect("split gives one token at least");
    let mut node = document;
    for token in &tokens {
        node = node.get_mut(token).ok_or_else(|| PatchError::Missing { path: path.to_owned(), op: "reach" })?;
    }
    let object = node.as_object_mut().ok_or_else(|| PatchError::NotAnObject { path: path.to_owned() })?;
    Ok((object, last))
}

/// Applies `operations` to a copy of `document`; the copy if all apply, else the first error.
pub fn apply(document: &Value, operations: &[PatchOperation]) -> Result<Value, PatchError> {
    let mut patched = document.clone();
    for operation in operations {
        let path = operation.path();
        let (object, key) = parent(&mut patched, path)?;
        match operation {
            PatchOperation::Add { value, .. } => {
                object.insert(key, value.clone());
            }
            PatchOperation::Replace { value, .. } => {
                let slot = object.get_mut(&key).ok_or_else(|| PatchError::Missing { path: path.to_owned(), op: "replace" })?;
                *slot = value.clone();
            }
            PatchOperation::Remove { .. } => {
                object.remove(&key).ok_or_else(|| PatchError::Missing { path: path.to_owned(), op: "remove" })?;
            }
            PatchOperation::Test { value, .. } => {
                if object.get(&key) != Some(value) {
                    return Err(PatchError::TestFailed { path: path.to_owned() });
                }
            }
        }
    }
    Ok(patched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn operations(value: Value) -> Vec<PatchOperation> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn applies_what_baremetal_node_set_and_unset_send() {
        let document = json!({ "name": "n1", "properties": {}, "extra": { "a": "b", "x/y": 1 } });
        let patched = apply(
            &document,
            &operations(json!([
                { "op": "add", "path": "/properties/cpus", "value": 4 },
                { "op": "replace", "path": "/name", "value": "n2" },
                { "op": "remove", "path": "/extra/a" },
                { "op": "remove", "path": "/extra/x~1y" },
                { "op": "test", "path": "/name", "value": "n2" },
            ])),
        )
        .unwrap();
        assert_eq!(patched, json!({ "name": "n2", "properties": { "cpus": 4 }, "extra": {} }));
    }

    #[test]
    fn a_failing_operation_changes_nothing_and_says_where() {
        let document = json!({ "extra": {} });
        let missing = apply(&document, &operations(json!([{ "op": "remove", "path": "/extra/nope" }])));
        assert_eq!(missing.unwrap_err().to_string(), "'/extra/nope': nothing there to remove");
        assert!(matches!(
            apply(&document, &operations(json!([{ "op": "add", "path": "extra", "value": 1 }]))),
            Err(PatchError::NotAPointer { .. })
        ));
        assert!(serde_json::from_value::<Vec<PatchOperation>>(json!([{ "op": "move", "from": "/a", "path": "/b" }])).is_err());
    }
}
