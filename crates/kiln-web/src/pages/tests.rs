//! Snapshots of the pages, and the rules they keep: escaping, no secret, only allowed actions.

use expect_test::expect;

use super::*;

fn node(name: &str, state: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "id": "0f0e", "name": name, "xname": "x1000c0s0b0n0", "nid": 1, "role": null, "groups": ["compute"],
        "interfaces": [{"mac_addr": "52:54:00:be:ef:01", "ip_addrs": [{"ip_addr": "10.0.0.5"}]}],
        "bmc": {"driver": "redfish", "address": "10.1.0.5", "mac": null, "username": "root", "password": "******", "insecure": false},
        "properties": {"rack": "r1"}, "project": "alpha", "provision_state": state, "maintenance": false,
        "created_at": "2026-12-06T10:00:00Z", "updated_at": "2026-12-06T10:00:00Z",
    }))
    .unwrap()
}

fn frame() -> Frame {
    Frame { user: Some("alice".into()), admin: false, csrf: "csrf-token".into(), notice: None, error: None }
}

/// The `<main>` of a rendered page, so that snapshots show the page's own part.
fn main_of(html: &str) -> String {
    let start = html.find("<main").unwrap();
    let end = html.find("</main>").unwrap();
    html[start..end + 7].to_owned()
}

#[test]
fn the_node_list_escapes_what_it_shows_and_links_each_node() {
    let page = Page::Nodes {
        nodes: vec![node("n1", "active"), node("<script>alert(1)</script>", "deploy-failed")],
        filter: NodeFilterView { search: "\"><b>".into(), ..NodeFilterView::default() },
        next_href: Some("/ui/nodes?after=n1".into()),
        first_href: None,
    };
    let html = Console::new().render(&frame(), &page).unwrap();
    assert!(!html.contains("<script>alert"), "a node's name is never markup");
    assert!(!html.contains("\"><b>"), "nor is a filter shown back");
    let link = html.lines().find(|line| line.contains("alert")).unwrap();
    assert!(link.contains("/ui/nodes/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"), "{link}");
    assert!(html.contains(r#"<input type="hidden" name="csrf" value="csrf-token">"#), "sign-out carries the CSRF token");
    assert!(html.contains(r#"aria-current="page">Nodes</a>"#), "the navigation marks the section");
}

#[test]
fn a_node_page_never_shows_the_bmc_password_and_offers_only_what_its_state_takes() {
    let mut status: ProvisionStatus = serde_json::from_value(serde_json::json!({
        "node": "n1", "provision_state": "active", "maintenance": false, "step": null, "pending": null, "target": null,
        "progress": {"phase": "writing", "bytes_done": 512, "bytes_total": 1024, "rate": null},
        "last_error": null, "state_entered_at": null, "deadline": null, "agent_seen_at": null, "owner": null,
    }))
    .unwrap();
    let page = |status: &ProvisionStatus, can_operate| Page::Node {
        node: Box::new(node("n1", status.provision_state.as_str())),
        status: Box::new(status.clone()),
        events: Vec::new(),
        images: vec!["debian".into(), "alpha/custom".into()],
        can_operate,
        console: "login: <b>".into(),
        console_end: 10,
    };
    let html = Console::new().render(&frame(), &page(&status, true)).unwrap();
    assert!(!html.contains("******"), "not even the mask");
    assert!(html.contains("password set (hidden)"));
    assert!(html.contains("login: &lt;b&gt;"), "the console is text, not markup");
    assert!(html.contains(r#"<progress id="progress" max="100" value="50">"#));
    assert!(html.contains("/ui/nodes/n1/undeploy") && !html.contains("/ui/nodes/n1/provide"));
    status.provision_state = ProvisionState::Available;
    let reader = Console::new().render(&frame(), &page(&status, false)).unwrap();
    assert!(!reader.contains("/ui/nodes/n1/deploy") && !reader.contains("/ui/nodes/n1/inspect"), "a reader sees no action");
    assert!(!reader.contains("/ui/nodes/n1/power"), "nor power buttons");
}

#[test]
fn actions_follow_the_lifecycle_s_rule() {
    let verbs = |state| provision_actions(state).iter().map(|action| action.verb).collect::<Vec<_>>().join(" ");
    expect![["manage"]].assert_eq(&verbs(ProvisionState::Enroll));
    expect![["provide inspect clean"]].assert_eq(&verbs(ProvisionState::Manageable));
    expect![["inspect clean"]].assert_eq(&verbs(ProvisionState::Available));
    expect![["undeploy"]].assert_eq(&verbs(ProvisionState::Active));
    expect![["abort"]].assert_eq(&verbs(ProvisionState::WaitAgent));
}

#[test]
fn the_sign_in_page() {
    let page = Page::SignIn { csrf: "login-csrf".into(), next: "/ui/nodes".into(), user: String::new() };
    let html = Console::new().render(&Frame::default(), &page).unwrap();
    assert!(!html.contains("Sign out"));
    expect![[r#"
        <main id="main">



        <h1>Sign in</h1>
        <form class="card narrow" method="post" action="/ui/sign-in">
        <input type="hidden" name="csrf" value="login-csrf">
        <input type="hidden" name="next" value="&#x2f;ui&#x2f;nodes">
        <p><label for="user">User name</label><input id="user" name="user" autocomplete="username" required value="" autofocus></p>
        <p><label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required></p>
        <p><button type="submit">Sign in</button></p>
        </form>

        </main>"#]]
    .assert_eq(&main_of(&html));
}

#[test]
fn an_api_error_naming_a_field_is_shown_beside_it() {
    assert_eq!(field_of_error("macs: 'zz' is not a MAC address", &["macs", "kernel"]), (Some("macs"), "'zz' is not a MAC address"));
    assert_eq!(field_of_error("node 'x' not found", &["macs"]), (None, "node 'x' not found"));
    assert_eq!(field_of_error("macs[1]: 'zz' is not a MAC", &["macs"]), (Some("macs"), "macs[1]: 'zz' is not a MAC"));
    let mut errors = std::collections::BTreeMap::new();
    errors.insert("macs".to_owned(), "'zz' is not a MAC address".to_owned());
    let page =
        Page::Boot { entries: Vec::new(), form: BootForm { macs: "zz".into(), ..BootForm::default() }, cloud_init: String::new(), errors };
    let html = Console::new().render(&Frame { admin: true, ..frame() }, &page).unwrap();
    let field = html.lines().find(|line| line.contains(r#"id="boot-macs""#)).unwrap();
    assert!(field.contains(r#"aria-invalid="true""#) && field.contains("boot-macs-error"), "{field}");
    assert!(html.contains(r#"<span class="field-error" id="boot-macs-error">&#x27;zz&#x27; is not a MAC address</span>"#), "{html}");
}

#[test]
fn the_calendar_marks_the_days_each_reservation_holds() {
    let reservation = |node: &str, start: Option<&str>, end: Option<&str>| kiln_types::provision::Reservation {
        node: node.into(),
        project: Some("alpha".into()),
        image: "alpha/debian".into(),
        version: 2,
        start_at: start.map(|at| at.parse().unwrap()),
        end_at: end.map(|at| at.parse().unwrap()),
        pending: start.is_some(),
        provision_state: ProvisionState::Available,
    };
    let page = Page::Reservations {
        reservations: vec![reservation("n1", Some("2026-12-07T08:00:00Z"), Some("2026-12-08T08:00:00Z")), reservation("n2", None, None)],
        today: jiff::civil::date(2026, 12, 6),
        days: 4,
    };
    let held = |html: &str, node: &str| {
        let row = html.lines().find(|line| line.contains(&format!(">{node}</a>"))).unwrap().to_owned();
        row.split("<td class=\"").skip(1).map(|cell| cell.starts_with("held")).collect::<Vec<_>>()
    };
    let html = Console::new().render(&frame(), &page).unwrap();
    assert_eq!(held(&html, "n1"), [false, true, true, false], "from the 7th 08:00 to the 8th 08:00");
    assert_eq!(held(&html, "n2"), [true, true, true, true], "held until undeployed");
    assert!(html.contains("Sun 06") && html.contains("2026-12-07 08:00 to 2026-12-08 08:00"));
}
