//! Ironic's error body: `{"error_message": "<JSON text>"}`, the inner document holding
//! `faultstring` (the message), `faultcode` (`Client` for a 4xx, `Server` for a 5xx) and
//! `debuginfo`. Ironic's clients parse the inner text to show the message.

use serde_json::{Value, json};

/// The body of an error answered with `status`.
pub fn error_body(status: u16, message: &str) -> Value {
    let fault = json!({
        "faultstring": message,
        "faultcode": if status < 500 { "Client" } else { "Server" },
        "debuginfo": Value::Null,
    });
    json!({ "error_message": fault.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_inside_a_json_string() {
        let body = error_body(404, "Node x could not be found.");
        let inner: Value = serde_json::from_str(body["error_message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["faultstring"], "Node x could not be found.");
        assert_eq!(inner["faultcode"], "Client");
        assert_eq!(serde_json::from_str::<Value>(error_body(500, "x")["error_message"].as_str().unwrap()).unwrap()["faultcode"], "Server");
    }
}
