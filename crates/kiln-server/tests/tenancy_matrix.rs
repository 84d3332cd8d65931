//! Every operation of the OpenAPI document (and so, by the route-drift test, every route
//! the router serves), called by six kinds of caller on a resource of the caller's own
//! project, of another project and on a missing one. Asserted: another project's resource
//! answers exactly as a missing one (status and message); a non-administrator never gets
//! a 2xx for another project's resource; a reader changes nothing (the event log does not
//! grow); no answer holds a planted secret; without a valid token, `/v1` answers 401.
//! Both projects also hold a group and an image of one name (`twin`): a second pass names
//! them as `PROJECT/NAME`, so that another project's twin answers as a missing one does.

use std::collections::BTreeMap;

mod support;

use kiln_client::Client;
use serde_json::{Value, json};

/// A value for each path parameter, by its name.
type Values = BTreeMap<&'static str, String>;

const BMC_SECRET: &str = "planted-bmc-password-7f3a";
const CLOUD_INIT_SECRET: &str = "planted-cloud-init-secret-91c2";

/// Values for each path parameter: the caller's own project's, another project's, none.
struct Fixture {
    own: Values,
    other: Values,
    missing: Values,
}

async fn post(client: &Client, path: &str, body: Value) -> Value {
    client.post(path, &body).await.unwrap_or_else(|error| panic!("POST {path}: {error}"))
}

/// Two projects, each with a node (with a BMC password and cloud-init secrets), a group,
/// an image and an upload, and a group and an image named alike in both (`twin`); a member
/// and a reader of `own`, a member of `other`.
async fn fixture(admin: &Client) -> (Fixture, Values, Vec<String>) {
    let mut users = BTreeMap::new();
    let mut secrets = vec![BMC_SECRET.to_owned(), CLOUD_INIT_SECRET.to_owned()];
    let mut by_project = BTreeMap::new();
    // Project names no message's words contain ("other" is in "another"), so that masking
    // them to compare answers masks nothing else.
    for (project, member, role) in [("proj-own", "mem", "member"), ("proj-own", "rea", "reader"), ("proj-other", "out", "member")] {
        if !by_project.contains_key(project) {
            post(admin, "/v1/projects", json!({ "name": project })).await;
            by_project.insert(project, BTreeMap::new());
        }
        post(admin, "/v1/users", json!({ "name": member })).await;
        let _: Value = admin.put(&format!("/v1/projects/{project}/members"), &json!({ "user": member, "role": role })).await.unwrap();
        let token: kiln_types::api::CreatedToken = admin.post("/v1/tokens", &json!({ "name": "t", "user": member })).await.unwrap();
        secrets.push(token.secret.clone());
        users.insert(member, token.secret);
        if role == "member" {
            by_project.get_mut(project).expect("inserted").insert("token", token.token.id.clone());
        }
    }
    for (project, suffix) in [("proj-own", "o"), ("proj-other", "x")] {
        let node = format!("node-{suffix}");
        let bmc = json!({ "driver": "redfish", "address": "http://127.0.0.1:9", "username": "root", "password": BMC_SECRET });
        post(
            admin,
            "/v1/nodes",
            json!({ "name": node, "project": project, "bmc": bmc,
            "interfaces": [{ "mac_addr": format!("52:54:00:aa:00:0{}", if suffix == "o" { 1 } else { 2 }) }] }),
        )
        .await;
        post(admin, "/v1/cloud-init/nodes", json!([{ "id": node, "secret-data": { "key": CLOUD_INIT_SECRET } }])).await;
        let group = format!("group-{suffix}");
        post(admin, "/v1/groups", json!({ "name": group, "project": project })).await;
        let image = format!("image-{suffix}");
        post(admin, "/v1/images", json!({ "name": image, "project": project })).await;
        let upload = post(admin, "/v1/uploads", json!({ "image": image })).await;
        // Names are unique within a project only: the same name in both is no conflict.
        post(admin, "/v1/groups", json!({ "name": "twin", "project": project })).await;
        post(admin, "/v1/images", json!({ "name": "twin", "project": project })).await;
        let values = by_project.get_mut(project).expect("made above");
        values.insert("node", node);
        values.insert("group", group);
        values.insert("image", image);
        values.insert("id", upload["id"].as_str().expect("an upload id").to_owned());
        values.insert("project", project.to_owned());
    }
    let common = |values: &mut Values| {
        values.insert("version", "1".to_owned());
        values.insert("tag", "stable".to_owned());
        values.insert("artifact", "disk".to_owned());
        values.insert("document", "meta-data".to_owned());
        values.insert("token", "not-a-cloud-init-token".to_owned());
    };
    let mut own = by_project.remove("proj-own").expect("own");
    let mut other = by_project.remove("proj-other").expect("other");
    // The token ids: "id" is also the upload's; tokens are under /v1/tokens/{id}.
    let own_token = own.remove("token").expect("own's member token");
    let other_token = other.remove("token").expect("other's member token");
    own.insert("token_id", own_token);
    other.insert("token_id", other_token);
    let mut missing: Values = [
        ("node", "node-nowhere"),
        ("group", "group-nowhere"),
        ("image", "image-nowhere"),
        ("id", "0000000000000000"),
        ("project", "nowhere"),
        ("token_id", "0000000000000000"),
    ]
    .into_iter()
    .map(|(key, value)| (key, value.to_owned()))
    .collect();
    common(&mut own);
    common(&mut other);
    common(&mut missing);
    // Users belong to no project: "another project's" user is the other project's member.
    own.insert("user", "mem".to_owned());
    other.insert("user", "out".to_owned());
    missing.insert("user", "nobody".to_owned());
    (Fixture { own, other, missing }, users, secrets)
}

/// The same values, with the image and the group named `reference` (`PROJECT/NAME`).
fn with_twins(values: &Values, reference: &str) -> Values {
    let mut values = values.clone();
    values.insert("image", reference.to_owned());
    values.insert("group", reference.to_owned());
    values
}

/// `template` with its parameters filled from `values`, each encoded as one path segment;
/// `/v1/tokens/{id}` takes a token's id, every other `{id}` an upload's.
fn fill(template: &str, values: &Values) -> String {
    let tokens = template.starts_with("/v1/tokens/");
    let mut path = template.to_owned();
    for (name, value) in values {
        let placeholder = match *name {
            "token_id" if tokens => "{id}".to_owned(),
            "token_id" => continue,
            "id" if tokens => continue,
            other => format!("{{{other}}}"),
        };
        path = path.replace(&placeholder, &kiln_client::encode(value));
    }
    path
}

/// A small valid example of `schema`: required properties only, one item in each list, the
/// first of each choice, so that a call gets past decoding its body to the resource it
/// names (a body refused as malformed would answer alike for every resource).
fn sample(schema: &Value, document: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().expect("a schema name");
        return sample(&document["components"]["schemas"][name], document);
    }
    for choice in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = schema[choice].as_array().and_then(|choices| choices.iter().find(|choice| choice["type"] != "null")) {
            return sample(first, document);
        }
    }
    if let Some(first) = schema["enum"].as_array().and_then(|words| words.first()) {
        return first.clone();
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds.iter().find(|kind| *kind != "null").cloned().unwrap_or(Value::Null),
        kind => kind.clone(),
    };
    match kind.as_str() {
        Some("object") => {
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            let fields =
                required.iter().filter_map(Value::as_str).map(|field| (field.to_owned(), sample(&schema["properties"][field], document)));
            Value::Object(fields.collect())
        }
        Some("array") => json!([sample(&schema["items"], document)]),
        Some("string") if schema["format"] == "date-time" => json!("2030-01-01T00:00:00Z"),
        Some("string") => json!("sample"),
        Some("integer") => json!(1),
        Some("number") => json!(1.0),
        Some("boolean") => json!(false),
        _ => json!({}),
    }
}

/// The body each call of an operation sends: a sample of its JSON request body, or `{}`.
fn request_body(document: &Value, method: &str, template: &str) -> String {
    let schema = &document["paths"][template][method]["requestBody"]["content"]["application/json"]["schema"];
    if schema.is_null() { "{}".to_owned() } else { sample(schema, document).to_string() }
}

/// One raw call: status and body.
async fn call(http: &reqwest::Client, base: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
    let mut request = http.request(method.clone(), format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    let response = request.send().await.unwrap_or_else(|error| panic!("{path}: {error}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Routes whose callers are machines (tokens of their own, or a MAC), not `/v1` users.
fn machine_facing(path: &str) -> bool {
    ["/agent/", "/boot/", "/cloud-init/", "/cloud-init-secure/", "/healthz", "/metrics"].iter().any(|prefix| path.starts_with(prefix))
}

/// Events about project resources (a reader may still make tokens of its own).
async fn event_count(admin: &Client) -> usize {
    let events: Vec<Value> = admin.get("/v1/events?limit=1000").await.unwrap();
    events.iter().filter(|event| !event["project"].is_null()).count()
}

#[tokio::test]
async fn another_projects_resources_look_missing_to_every_caller_on_every_operation() {
    let server = support::start_server(Default::default()).await;
    let base = format!("http://{}", server.handle.local_addr());
    let admin_token = server.admin_token.clone();
    let admin = Client::new(&base, Some(admin_token.clone()));
    let (fixture, users, secrets) = fixture(&admin).await;
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(kiln_test_utils::workspace_root().join("openapi/kiln.json")).unwrap()).unwrap();
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    let mut calls = 0;
    let operations: Vec<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|method| ["get", "post", "put", "patch", "delete"].contains(&method.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    for (method, template) in &operations {
        calls += check_operation(
            &Check { http: &http, base: &base, admin: &admin, fixture: &fixture, users: &users, secrets: &secrets, document: &document },
            method,
            template,
            &mut failures,
        )
        .await;
    }
    // Again for every operation on an image or a group, naming the twins exactly.
    let twins = Fixture {
        own: with_twins(&fixture.own, "proj-own/twin"),
        other: with_twins(&fixture.other, "proj-other/twin"),
        missing: with_twins(&fixture.missing, "nowhere/twin"),
    };
    for (method, template) in operations.iter().filter(|(_, template)| template.contains("{image}") || template.contains("{group}")) {
        calls += check_operation(
            &Check { http: &http, base: &base, admin: &admin, fixture: &twins, users: &users, secrets: &secrets, document: &document },
            method,
            template,
            &mut failures,
        )
        .await;
    }
    // The administrator reads everything, and no answer holds a planted secret.
    for (method, template) in operations.iter().filter(|(method, _)| method == "get") {
        for values in [&fixture.own, &fixture.other] {
            let path = fill(template, values);
            let (_, body) = call(&http, &base, method, &path, Some(&admin_token), "").await;
            calls += 1;
            for secret in &secrets {
                if body.contains(secret.as_str()) {
                    failures.push(format!("the administrator: GET {path} answered a planted secret"));
                }
            }
        }
    }
    eprintln!("{} operations, {calls} calls, {} failures", operations.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.handle.shutdown().await;
}

/// What every operation's check needs.
struct Check<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    admin: &'a Client,
    fixture: &'a Fixture,
    users: &'a Values,
    secrets: &'a [String],
    document: &'a Value,
}

/// One operation by the five callers without an administrator's rights; returns the calls
/// made, adding what failed to `failures`.
async fn check_operation(check: &Check<'_>, method: &str, template: &str, failures: &mut Vec<String>) -> usize {
    let Check { http, base, admin, fixture, users, secrets, document } = *check;
    let request = request_body(document, method, template);
    let mut calls = 0;
    let mutating = method != "get";
    // Who is in which project: a resource of the other project is foreign to each.
    let callers: [(&str, Option<&str>, Option<&Values>); 5] = [
        ("no token", None, None),
        ("a garbage token", Some("kiln_garbage0000000000000000000000000000000"), None),
        ("another project's member", Some(&users["out"]), Some(&fixture.own)),
        ("a reader", Some(&users["rea"]), Some(&fixture.other)),
        ("a member", Some(&users["mem"]), Some(&fixture.other)),
    ];
    for (who, token, foreign) in callers {
        let missing_path = fill(template, &fixture.missing);
        let before = if who == "a reader" { event_count(admin).await } else { 0 };
        let (missing_status, missing_body) = call(http, base, method, &missing_path, token, &request).await;
        calls += 1;
        if let Some(foreign) = foreign.filter(|_| template.contains('{')) {
            let foreign_path = fill(template, foreign);
            let (status, body) = call(http, base, method, &foreign_path, token, &request).await;
            calls += 1;
            let same = |text: &str, values: &Values| {
                values.values().fold(text.to_owned(), |text, value| if value.len() > 2 { text.replace(value.as_str(), "X") } else { text })
            };
            if !machine_facing(template) {
                if (200..300).contains(&status) {
                    failures.push(format!("{who}: {method} {foreign_path} answered {status} for another project's resource"));
                }
                if status != missing_status || same(&body, foreign) != same(&missing_body, &fixture.missing) {
                    failures.push(format!(
                        "{who}: {method} {template}: another project's resource answers {status} {body}, a missing one {missing_status} {missing_body}"
                    ));
                }
            }
            for secret in secrets {
                if body.contains(secret.as_str()) && token != Some(secret.as_str()) {
                    failures.push(format!("{who}: {method} {foreign_path} answered a planted secret"));
                }
            }
        }
        // The caller's own project's resource: reads for everyone, and every operation
        // for the reader, who may change nothing.
        if who == "a reader" || !mutating {
            let own_path = fill(template, &fixture.own);
            let (_, body) = call(http, base, method, &own_path, token, &request).await;
            calls += 1;
            for secret in secrets {
                if body.contains(secret.as_str()) {
                    failures.push(format!("{who}: {method} {own_path} answered a planted secret"));
                }
            }
        }
        if who == "a reader" && mutating && event_count(admin).await != before {
            failures.push(format!("a reader changed something with {method} {template}"));
        }
        let public = template == "/v1/openapi.json";
        if token.is_none_or(|token| token.starts_with("kiln_garbage")) && template.starts_with("/v1/") && !public && missing_status != 401 {
            failures.push(format!("{who}: {method} {missing_path} answered {missing_status}, not 401"));
        }
    }
    calls
}
