//! Ironic's `driver` and `driver_info` as Kiln's BMC, and back.
//!
//! | Ironic driver        | Kiln BMC  | `driver_info` keys that make the BMC                                     |
//! |----------------------|-----------|----------------------------------------------------------------------------|
//! | `ipmi`               | `ipmi`    | `ipmi_address`, `ipmi_port`, `ipmi_username`, `ipmi_password`            |
//! | `redfish`            | `redfish` | `redfish_address`, `redfish_system_id`, `redfish_username`, `redfish_password`, `redfish_verify_ca` |
//! | `manual-management`  | `none`    |                                                                            |
//! | `kiln-lab`           | `lab`     | `kiln_lab_address` (the test lab's machines)                               |
//!
//! Other keys (`deploy_kernel`, `deploy_ramdisk`, …) are kept as they are and answered back.
//! A password is sealed with the BMC's and answered as `******`; a key that looks like
//! another secret is refused rather than kept in the clear.

use kiln_types::node::{BmcInput, BmcView};
use kiln_types::{BmcDriver, SECRET_MASK};
use serde_json::{Map, Value};

/// Ironic's `driver_info`, split into what makes Kiln's BMC and what is kept beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverInfo {
    pub bmc: BmcInput,
    /// Keys that are not the BMC's.
    pub kept: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("the driver '{driver}' is not one Kiln speaks: ipmi, redfish, manual-management or kiln-lab")]
    UnknownDriver { driver: String },
    #[error("driver_info.{key}: {message}")]
    InvalidKey { key: String, message: String },
    #[error("driver_info.{key} looks like a secret, which Kiln does not keep in the clear; only the BMC password is kept (sealed)")]
    SecretKept { key: String },
}

/// The BMC driver an Ironic driver name stands for.
pub fn bmc_driver(driver: &str) -> Result<BmcDriver, DriverError> {
    match driver {
        "ipmi" => Ok(BmcDriver::Ipmi),
        "redfish" => Ok(BmcDriver::Redfish),
        "manual-management" => Ok(BmcDriver::None),
        "kiln-lab" => Ok(BmcDriver::Lab),
        other => Err(DriverError::UnknownDriver { driver: other.to_owned() }),
    }
}

/// The Ironic driver name of a Kiln BMC (for nodes Kiln's own API made).
pub fn driver_name(bmc: Option<&BmcView>) -> &'static str {
    match bmc.map(|bmc| bmc.driver) {
        Some(BmcDriver::Ipmi) => "ipmi",
        Some(BmcDriver::Redfish) => "redfish",
        Some(BmcDriver::Lab) => "kiln-lab",
        Some(BmcDriver::None) | None => "manual-management",
    }
}

fn text(key: &str, value: &Value) -> Result<String, DriverError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        _ => Err(DriverError::InvalidKey { key: key.to_owned(), message: "must be a string".to_owned() }),
    }
}

/// Whether a key names a secret, in any case.
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "community", "credential", "_key", "passphrase"].iter().any(|word| key.contains(word))
}

/// The first secret-looking key in `value`, or in the objects and lists inside it.
fn secret_inside(key: &str, value: &Value) -> Option<String> {
    if secret_key(key) {
        return Some(key.to_owned());
    }
    match value {
        Value::Object(object) => object.iter().find_map(|(inner, value)| secret_inside(inner, value).map(|found| format!("{key}.{found}"))),
        Value::Array(items) => items.iter().find_map(|item| secret_inside(key, item)),
        _ => None,
    }
}

/// Splits `info` for a node of `driver`.
pub fn split_driver_info(driver: &str, info: &Map<String, Value>) -> Result<DriverInfo, DriverError> {
    let bmc_driver = bmc_driver(driver)?;
    let mut bmc = BmcInput { driver: Some(bmc_driver.as_str().to_owned()), ..Default::default() };
    let mut kept = Map::new();
    let (mut host, mut port, mut base, mut system) = (None, None, None, None);
    for (key, value) in info {
        match (bmc_driver, key.as_str()) {
            (BmcDriver::Ipmi, "ipmi_address") => host = Some(text(key, value)?),
            (BmcDriver::Ipmi, "ipmi_port") => port = Some(text(key, value)?),
            (BmcDriver::Ipmi, "ipmi_username") | (BmcDriver::Redfish, "redfish_username") => bmc.username = Some(text(key, value)?),
            (BmcDriver::Ipmi, "ipmi_password") | (BmcDriver::Redfish, "redfish_password") => bmc.password = Some(text(key, value)?),
            (BmcDriver::Redfish, "redfish_address") => base = Some(text(key, value)?),
            (BmcDriver::Redfish, "redfish_system_id") => system = Some(text(key, value)?),
            (BmcDriver::Redfish, "redfish_verify_ca") => bmc.insecure = Some(!verify_ca(key, value)?),
            (BmcDriver::Lab, "kiln_lab_address") => bmc.address = Some(text(key, value)?),
            // A masked value sent back (another driver's password, after a change of driver)
            // is the mask, not a secret: nothing to keep.
            (_, other) if secret_key(other) && value == SECRET_MASK => {}
            _ => {
                if let Some(found) = secret_inside(key, value) {
                    return Err(DriverError::SecretKept { key: found });
                }
                kept.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(host) = host {
        bmc.address = Some(match port {
            Some(port) if host.contains(':') => format!("[{host}]:{port}"),
            Some(port) => format!("{host}:{port}"),
            None => host,
        });
    } else if port.is_some() {
        return Err(DriverError::InvalidKey { key: "ipmi_port".to_owned(), message: "given without ipmi_address".to_owned() });
    }
    if let Some(base) = base {
        // Ironic takes a bare host as HTTPS.
        let base = if base.contains("://") { base } else { format!("https://{base}") };
        bmc.address = Some(match system {
            Some(system) => format!("{}/{}", base.trim_end_matches('/'), system.trim_start_matches('/')),
            None => base,
        });
    } else if system.is_some() {
        return Err(DriverError::InvalidKey { key: "redfish_system_id".to_owned(), message: "given without redfish_address".to_owned() });
    }
    Ok(DriverInfo { bmc, kept })
}

/// `redfish_verify_ca`: a boolean (or its words); a CA bundle's path is not taken.
fn verify_ca(key: &str, value: &Value) -> Result<bool, DriverError> {
    match value {
        Value::Bool(verify) => Ok(*verify),
        Value::String(word) => match word.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Ok(true),
            "false" | "no" | "0" | "off" => Ok(false),
            _ => Err(DriverError::InvalidKey {
                key: key.to_owned(),
                message: format!(
                    "'{word}' is not true or false (a CA bundle's path is not supported: Kiln verifies against the system's CAs)"
                ),
            }),
        },
        _ => Err(DriverError::InvalidKey { key: key.to_owned(), message: "must be true or false".to_owned() }),
    }
}

/// The `driver_info` answered for a node: its BMC under `driver`'s keys, the password
/// masked, and the kept keys as they were given.
pub fn driver_info_document(bmc: Option<&BmcView>, kept: &Map<String, Value>) -> Map<String, Value> {
    let mut info = kept.clone();
    let Some(bmc) = bmc else { return info };
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            info.insert(key.to_owned(), Value::String(value));
        }
    };
    let masked = bmc.password.as_ref().map(|_| SECRET_MASK.to_owned());
    match bmc.driver {
        BmcDriver::Ipmi => {
            let (host, port) = bmc.address.as_deref().map(split_host_port).unwrap_or_default();
            put("ipmi_address", host);
            put("ipmi_port", port);
            put("ipmi_username", bmc.username.clone());
            put("ipmi_password", masked);
        }
        BmcDriver::Redfish => {
            let (base, system) = bmc.address.as_deref().map(split_system).unwrap_or_default();
            put("redfish_address", base);
            put("redfish_system_id", system);
            put("redfish_username", bmc.username.clone());
            put("redfish_password", masked);
            info.insert("redfish_verify_ca".to_owned(), Value::Bool(!bmc.insecure));
        }
        BmcDriver::Lab => put("kiln_lab_address", bmc.address.clone()),
        BmcDriver::None => {}
    }
    info
}

/// `host:port` (or `[v6]:port`) into its parts; a bare host has no port.
fn split_host_port(address: &str) -> (Option<String>, Option<String>) {
    if let Some(rest) = address.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
    {
        return (Some(host.to_owned()), Some(port.to_owned()));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => (Some(host.to_owned()), Some(port.to_owned())),
        _ => (Some(address.to_owned()), None),
    }
}

/// A Redfish URL into its service (`https://bmc`) and its system's path, if it names one.
fn split_system(address: &str) -> (Option<String>, Option<String>) {
    match address.find("/redfish/v1/Systems/") {
        Some(at) => (Some(address[..at].to_owned()), Some(address[at..].to_owned())),
        None => (Some(address.to_owned()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn view(input: &BmcInput) -> BmcView {
        let spec = kiln_types::node::validate_bmc(input).unwrap();
        BmcView {
            driver: spec.driver,
            address: spec.address,
            mac: spec.mac,
            username: spec.username,
            password: spec.password.map(|_| SECRET_MASK.to_owned()),
            insecure: spec.insecure,
        }
    }

    #[test]
    fn the_seed_s_ipmi_node_round_trips_with_its_password_masked() {
        let info = map(json!({
            "ipmi_address": "ipmi.server.net", "ipmi_username": "user", "ipmi_password": "pass",
            "deploy_kernel": "file:///images/deploy.vmlinuz", "deploy_ramdisk": "http://my.server.net/images/deploy.ramdisk",
        }));
        let split = split_driver_info("ipmi", &info).unwrap();
        assert_eq!(split.bmc.address.as_deref(), Some("ipmi.server.net"));
        assert_eq!(split.bmc.password.as_deref(), Some("pass"));
        assert_eq!(split.kept.keys().collect::<Vec<_>>(), ["deploy_kernel", "deploy_ramdisk"]);
        let answered = driver_info_document(Some(&view(&split.bmc)), &split.kept);
        expect_test::expect![[r#"{"deploy_kernel":"file:///images/deploy.vmlinuz","deploy_ramdisk":"http://my.server.net/images/deploy.ramdisk","ipmi_address":"ipmi.server.net","ipmi_username":"user","ipmi_password":"******"}"#]]
            .assert_eq(&Value::Object(answered).to_string());
    }

    #[test]
    fn ports_system_ids_and_verification_are_kept_in_kiln_s_address() {
        let ipmi = split_driver_info("ipmi", &map(json!({ "ipmi_address": "10.0.0.9", "ipmi_port": 6230 }))).unwrap();
        assert_eq!(ipmi.bmc.address.as_deref(), Some("10.0.0.9:6230"));
        assert_eq!(driver_info_document(Some(&view(&ipmi.bmc)), &Map::new())["ipmi_port"], "6230");
        let redfish = split_driver_info(
            "redfish",
            &map(json!({ "redfish_address": "bmc.example:8000", "redfish_system_id": "/redfish/v1/Systems/2", "redfish_verify_ca": "False" })),
        )
        .unwrap();
        assert_eq!(redfish.bmc.address.as_deref(), Some("https://bmc.example:8000/redfish/v1/Systems/2"));
        assert_eq!(redfish.bmc.insecure, Some(true));
        let answered = driver_info_document(Some(&view(&redfish.bmc)), &Map::new());
        assert_eq!(
            (answered["redfish_address"].as_str(), answered["redfish_system_id"].as_str(), &answered["redfish_verify_ca"]),
            (Some("https://bmc.example:8000"), Some("/redfish/v1/Systems/2"), &json!(false))
        );
    }

    #[test]
    fn unknown_drivers_stray_secrets_and_a_ca_path_are_refused() {
        assert!(matches!(split_driver_info("idrac", &Map::new()), Err(DriverError::UnknownDriver { .. })));
        let secret = split_driver_info("ipmi", &map(json!({ "ipmi_kg_key": "x" })));
        assert!(matches!(secret, Err(DriverError::SecretKept { key }) if key == "ipmi_kg_key"));
        let nested = split_driver_info("ipmi", &map(json!({ "snmp": { "SNMP_Community": "public" } })));
        assert!(matches!(nested, Err(DriverError::SecretKept { key }) if key == "snmp.SNMP_Community"));
        let upper = split_driver_info("ipmi", &map(json!({ "Vendor_PASSWD": "x" })));
        assert!(matches!(upper, Err(DriverError::SecretKept { .. })));
        let echoed = split_driver_info("redfish", &map(json!({ "ipmi_password": "******", "ipmi_address": "h" }))).unwrap();
        assert_eq!(echoed.kept.keys().collect::<Vec<_>>(), ["ipmi_address"], "the mask echoed back is dropped, not kept");
        let path = split_driver_info("redfish", &map(json!({ "redfish_address": "https://b", "redfish_verify_ca": "/etc/ca.pem" })));
        assert!(matches!(path, Err(DriverError::InvalidKey { .. })));
        assert!(split_driver_info("ipmi", &map(json!({ "ipmi_port": 623 }))).is_err());
    }
}
