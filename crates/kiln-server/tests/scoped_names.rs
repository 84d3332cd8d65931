//! Names of images and groups are unique within a project, not across projects (the
//! security issue's first hole): a tenant cannot learn another's names by colliding with
//! them, another project's resource answers exactly like a missing one, a bare name
//! resolves within the caller's own projects, and `PROJECT/NAME` names one exactly.

mod support;

use kiln_client::{Client, ClientError, encode};
use serde_json::{Value, json};
use support::{TestServer, start_server};

struct Tenants {
    server: TestServer,
    admin: Client,
    alice: Client,
    bob: Client,
}

/// A server with projects `a` (alice, member) and `b` (bob, member).
async fn tenants() -> Tenants {
    let boot = kiln_server::config::BootLayer { listen: Some("127.0.0.1:0".to_owned()), ..Default::default() };
    let server = start_server(kiln_server::ServerConfigLayer { boot: Some(boot), ..Default::default() }).await;
    let base = format!("http://{}", server.handle.local_addr());
    let admin = Client::new(&base, Some(server.admin_token.clone()));
    let mut members = Vec::new();
    for (project, user) in [("a", "alice"), ("b", "bob")] {
        let _: Value = admin.post("/v1/projects", &json!({ "name": project })).await.unwrap();
        let _: Value = admin.post("/v1/users", &json!({ "name": user })).await.unwrap();
        let _: Value = admin.put(&format!("/v1/projects/{project}/members"), &json!({ "user": user, "role": "member" })).await.unwrap();
        let token: kiln_types::api::CreatedToken = admin.post("/v1/tokens", &json!({ "name": "t", "user": user })).await.unwrap();
        members.push(Client::new(&base, Some(token.secret)));
    }
    let bob = members.pop().unwrap();
    let alice = members.pop().unwrap();
    Tenants { server, admin, alice, bob }
}

/// Status and message of a refused call, with `name` replaced so that answers about two
/// names can be compared.
fn refusal<T: std::fmt::Debug>(answer: Result<T, ClientError>, name: &str) -> (u16, String) {
    match answer {
        Err(ClientError::Api { status, message, .. }) => (status.as_u16(), message.replace(name, "NAME")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// An image with one version in `project` ("": none, the operators'), made by `client`;
/// its kernel reads `kernel of PROJECT`.
async fn image_with_version(client: &Client, project: &str, name: &str) -> Value {
    let (body, reference) = match project {
        "" => (json!({ "name": name }), name.to_owned()),
        _ => (json!({ "name": name, "project": project }), format!("{project}/{name}")),
    };
    let created: Value = client.post("/v1/images", &body).await.unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("kernel of {project}")).unwrap();
    let upload = client.upload_file(file.path(), &reference, None, &|_| {}).await.unwrap();
    let body = json!({ "artifacts": [{ "kind": "kernel", "upload": upload }] });
    let _: Value = client.post(&format!("/v1/images/{}/versions", encode(&reference)), &body).await.unwrap();
    created
}

/// What a machine fetching `path` without a token gets, from the API listener's router
/// and from the boot listener (which sends local blobs itself): the two must agree.
async fn boot_fetch(tenants: &Tenants, path: &str) -> (u16, String) {
    let boot = tenants.server.handle.boot_addr().expect("a boot listener");
    let mut answers = Vec::new();
    for address in [tenants.server.handle.local_addr(), boot] {
        let response = reqwest::get(format!("http://{address}{path}")).await.unwrap();
        answers.push((response.status().as_u16(), response.text().await.unwrap()));
    }
    let from_boot = answers.pop().unwrap();
    let from_api = answers.pop().unwrap();
    assert_eq!(from_api.0, from_boot.0, "{path}: the listeners disagree: {from_api:?} {from_boot:?}");
    if from_api.0 == 200 {
        assert_eq!(from_api, from_boot, "{path}");
    }
    from_api
}

#[tokio::test]
async fn two_projects_each_have_their_own_image_of_one_name() {
    let tenants = tenants().await;
    let (alice, bob) = (&tenants.alice, &tenants.bob);
    image_with_version(alice, "a", "debian").await;
    image_with_version(alice, "a", "golden").await;
    // Before: 409 "image 'debian' already exists", telling bob that a has one.
    let created = image_with_version(bob, "b", "debian").await;
    assert_eq!(created["project"], "b");
    // Cloning into a name another project holds is no collision either.
    let clone: Value = bob.post("/v1/images/debian/clone", &json!({ "name": "golden", "project": "b" })).await.unwrap();
    assert_eq!((clone["name"].as_str(), clone["project"].as_str()), (Some("golden"), Some("b")));

    // A bare name is the caller's own; each sees only its own, and listings hold only theirs.
    for (client, project) in [(alice, "a"), (bob, "b")] {
        let image: Value = client.get("/v1/images/debian").await.unwrap();
        assert_eq!(image["project"], project);
        let versions: Vec<Value> = client.get("/v1/images/debian/versions").await.unwrap();
        assert_eq!(versions.len(), 1);
        let images: Vec<Value> = client.get("/v1/images").await.unwrap();
        assert!(images.iter().all(|image| image["project"] == project), "{images:?}");
    }
    let own: Value = bob.get(&format!("/v1/images/{}", encode("b/debian"))).await.unwrap();
    assert_eq!(own["project"], "b");

    // Another project's image, named exactly, answers as a missing one does, for every verb.
    for (theirs, nowhere) in [("a/debian", "a/nothing"), ("a/golden", "b/nothing")] {
        let (theirs_path, nowhere_path) = (encode(theirs), encode(nowhere));
        let read = refusal(bob.get::<Value>(&format!("/v1/images/{theirs_path}")).await, theirs);
        assert_eq!(read, refusal(bob.get::<Value>(&format!("/v1/images/{nowhere_path}")).await, nowhere));
        assert_eq!(read.0, 404, "{read:?}");
        let patch = json!({ "description": "mine now" });
        let changed = refusal(bob.patch::<_, Value>(&format!("/v1/images/{theirs_path}"), &patch).await, theirs);
        assert_eq!(changed, refusal(bob.patch::<_, Value>(&format!("/v1/images/{nowhere_path}"), &patch).await, nowhere));
        let deleted = refusal(bob.delete::<Value>(&format!("/v1/images/{theirs_path}")).await, theirs);
        assert_eq!(deleted, refusal(bob.delete::<Value>(&format!("/v1/images/{nowhere_path}")).await, nowhere));
        let clone = json!({ "name": "stolen", "project": "b" });
        let cloned = refusal(bob.post::<_, Value>(&format!("/v1/images/{theirs_path}/clone"), &clone).await, theirs);
        assert_eq!(cloned, refusal(bob.post::<_, Value>(&format!("/v1/images/{nowhere_path}/clone"), &clone).await, nowhere));
    }
    let untouched: Value = alice.get("/v1/images/debian").await.unwrap();
    assert_eq!(untouched["description"], "");

    // An administrator sees both, so a bare name is ambiguous and the answer says how to
    // name either; `PROJECT/NAME` is exact.
    let (status, message) = refusal(tenants.admin.get::<Value>("/v1/images/debian").await, "debian");
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("a/NAME") && message.contains("b/NAME"), "{message}");
    let exact: Value = tenants.admin.get(&format!("/v1/images/{}", encode("a/debian"))).await.unwrap();
    assert_eq!(exact["project"], "a");

    // Public names too are per project: both may publish `debian`. A boot path names one
    // exactly as PROJECT%2FNAME; a bare name fitting two public images names neither, and
    // once the operators have an image of that name without a project, it is theirs.
    let _: Value = alice.patch("/v1/images/debian", &json!({ "visibility": "public" })).await.unwrap();
    let _: Value = bob.patch("/v1/images/debian", &json!({ "visibility": "public" })).await.unwrap();
    let mine: Value = bob.get("/v1/images/debian").await.unwrap();
    assert_eq!(mine["project"], "b", "the caller's own image comes before another's public one");
    let boot = |path: &'static str| boot_fetch(&tenants, path);
    assert_eq!(boot("/boot/images/a%2Fdebian/1/kernel").await, (200, "kernel of a".to_owned()));
    assert_eq!(boot("/boot/images/b%2Fdebian/1/kernel").await, (200, "kernel of b".to_owned()));
    assert_eq!(boot("/boot/images/debian/1/kernel").await.0, 404, "two public images of one name: neither");
    let operators = image_with_version(&tenants.admin, "", "debian").await;
    assert!(operators["project"].is_null());
    assert_eq!(boot("/boot/images/debian/1/kernel").await.0, 404, "the operators' image is not public yet");
    let _: Value = tenants.admin.patch("/v1/images/debian", &json!({ "visibility": "public" })).await.unwrap();
    assert_eq!(boot("/boot/images/debian/1/kernel").await, (200, "kernel of ".to_owned()));
    // An image made private again is served to no machine, by any name.
    let _: Value = alice.patch("/v1/images/debian", &json!({ "visibility": "private" })).await.unwrap();
    assert_eq!(boot("/boot/images/a%2Fdebian/1/kernel").await.0, 404);
    tenants.server.handle.shutdown().await;
}

#[tokio::test]
async fn two_projects_each_have_their_own_group_and_cloud_init_group_of_one_name() {
    let tenants = tenants().await;
    let (alice, bob) = (&tenants.alice, &tenants.bob);
    let _: Value = tenants.admin.post("/v1/nodes", &json!({ "name": "na", "project": "a" })).await.unwrap();
    let _: Value = tenants.admin.post("/v1/nodes", &json!({ "name": "nb", "project": "b" })).await.unwrap();
    let _: Value = alice.post("/v1/groups", &json!({ "name": "compute", "project": "a", "members": ["na"] })).await.unwrap();
    // Before: 409 "group 'compute' already exists".
    let _: Value = bob.post("/v1/groups", &json!({ "name": "compute", "project": "b", "members": ["nb"] })).await.unwrap();
    for (client, project, node) in [(alice, "a", "na"), (bob, "b", "nb")] {
        let group: Value = client.get("/v1/groups/compute").await.unwrap();
        assert_eq!((group["project"].as_str(), group["members"].clone()), (Some(project), json!([node])));
        let nodes: Value = client.get("/v1/nodes?group=compute").await.unwrap();
        let names: Vec<&str> = nodes["items"].as_array().unwrap().iter().map(|node| node["name"].as_str().unwrap()).collect();
        assert_eq!(names, [node]);
    }
    // A node joining `compute` by its bare name joins its own project's group.
    let _: Value = tenants.admin.post("/v1/nodes", &json!({ "name": "nb2", "project": "b", "groups": ["compute"] })).await.unwrap();
    let group: Value = bob.get("/v1/groups/compute").await.unwrap();
    assert_eq!(group["members"], json!(["nb", "nb2"]));
    let alices: Value = alice.get("/v1/groups/compute").await.unwrap();
    assert_eq!(alices["members"], json!(["na"]));

    // Cloud-init configs of the same name, each in its project; another project's answers as
    // a missing one, and so does setting a config without a project under its name (before:
    // "group not found" for a's name, something else for a name nowhere).
    for (client, project) in [(alice, "a"), (bob, "b")] {
        let body = json!([{ "name": "compute", "project": project, "meta-data": { "owner": project } }]);
        let _: Value = client.post("/v1/cloud-init/groups", &body).await.unwrap();
        let config: Value = client.get("/v1/cloud-init/groups/compute").await.unwrap();
        assert_eq!(config["meta-data"]["owner"], project);
    }
    let unowned = |name: &str| json!([{ "name": name, "meta-data": {} }]);
    assert_eq!(
        refusal(bob.post::<_, Value>("/v1/cloud-init/groups", &unowned("golden")).await, "golden"),
        refusal(bob.post::<_, Value>("/v1/cloud-init/groups", &unowned("nothing")).await, "nothing"),
    );
    let _: Value = alice.post("/v1/groups", &json!({ "name": "golden", "project": "a" })).await.unwrap();
    assert_eq!(
        refusal(bob.post::<_, Value>("/v1/cloud-init/groups", &unowned("golden")).await, "golden"),
        refusal(bob.post::<_, Value>("/v1/cloud-init/groups", &unowned("nothing")).await, "nothing"),
        "a's group 'golden' is like no group at all to bob"
    );
    for (path, theirs, nowhere) in [("/v1/groups", "a/golden", "a/nothing"), ("/v1/cloud-init/groups", "a/compute", "a/nothing")] {
        let read = refusal(bob.get::<Value>(&format!("{path}/{}", encode(theirs))).await, theirs);
        assert_eq!(read, refusal(bob.get::<Value>(&format!("{path}/{}", encode(nowhere))).await, nowhere));
        assert_eq!(read.0, 404);
        let deleted = refusal(bob.delete::<Value>(&format!("{path}/{}", encode(theirs))).await, theirs);
        assert_eq!(deleted, refusal(bob.delete::<Value>(&format!("{path}/{}", encode(nowhere))).await, nowhere));
    }
    let joined = tenants.admin.post::<_, Value>("/v1/nodes", &json!({ "name": "nb3", "project": "b", "groups": ["a/golden"] })).await;
    let nowhere = tenants.admin.post::<_, Value>("/v1/nodes", &json!({ "name": "nb3", "project": "b", "groups": ["a/nothing"] })).await;
    assert_eq!(refusal(joined, "a/golden"), refusal(nowhere, "a/nothing"), "a node cannot join another project's group");
    tenants.server.handle.shutdown().await;
}
