//! The web console over real HTTP against `kiln serve`: signing in and out, sessions and
//! their CSRF tokens, lockout, tenancy exactly as the API's, secrets never shown, actions
//! that reach the lifecycle, and API tokens made in the console that the CLI then uses.

mod support;

use support::console::{Browser, Site};
use support::{kiln, ok};

#[test]
fn a_member_signs_in_sees_only_their_project_acts_through_the_api_and_signs_out() {
    let site = Site::start("");
    let mut alice = Browser::new(&site.server);

    // `/` leads to the console, and the console to its sign-in page.
    assert_eq!(alice.get("/").header("location"), Some("/ui/"));
    let away = alice.get("/ui/nodes?state=enroll");
    assert_eq!(away.status, 303);
    assert_eq!(away.header("location"), Some("/ui/sign-in?next=/ui/nodes%3Fstate%3Denroll"));

    // A wrong password is refused with the API's one answer; the right one starts a session
    // in a cookie scripts cannot read and other sites cannot send.
    let wrong = alice.sign_in("alice", "not-her-password");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("invalid user name or password"), "{}", wrong.body);
    let signed_in = alice.sign_in("alice", "alice-long-password");
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.header("location"), Some("/ui/nodes"));
    let session_cookie = signed_in.headers.iter().find(|(name, value)| name == "set-cookie" && value.starts_with("kiln_session=")).unwrap();
    assert!(session_cookie.1.contains("HttpOnly") && session_cookie.1.contains("SameSite=Strict"), "{}", session_cookie.1);

    // Tenancy is the API's: alice's node is listed and shown, bob's is a 404 like a missing one.
    let nodes = alice.get("/ui/nodes");
    assert_eq!(nodes.status, 200);
    assert!(nodes.body.contains("alpha-node") && !nodes.body.contains("beta-node"));
    assert!(nodes.header("content-security-policy").unwrap().contains("default-src 'none'"));
    assert_eq!(alice.get("/ui/nodes/beta-node").status, 404);
    assert_eq!(alice.get("/ui/nodes/no-such-node").status, 404);
    assert!(alice.get("/ui/nodes?search=AA:00:01").body.contains("alpha-node"), "search by MAC");
    assert!(!alice.get("/ui/nodes?search=zzz").body.contains("alpha-node"));
    let page = alice.get("/ui/nodes/alpha-node");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("calvin-bmc-secret") && !page.body.contains("******"), "no BMC password, not even masked");
    assert!(page.body.contains("password set (hidden)"));
    let overview = alice.get("/ui/");
    assert!(overview.body.contains("1 nodes in all"), "{}", overview.body);

    // The live stream tells of alice's node and never of bob's, asked for or not.
    let live = alice.stream_for("/ui/live?nodes=alpha-node,beta-node", std::time::Duration::from_millis(1500));
    assert!(live.contains("text/event-stream"), "{live}");
    assert!(live.contains("\"alpha-node\"") && !live.contains("beta-node"), "{live}");

    // Actions need the session's CSRF token; with it they are the API's requests.
    let csrf = page.csrf();
    assert_eq!(alice.post("/ui/nodes/alpha-node/manage", &[]).status, 403, "no token");
    assert_eq!(alice.post("/ui/nodes/alpha-node/manage", &[("csrf", "forged")]).status, 403, "a wrong token");
    let managed = alice.post("/ui/nodes/alpha-node/manage", &[("csrf", &csrf)]);
    assert_eq!(managed.status, 303, "{}", managed.body);
    let status = site.kiln(&["node", "show", "alpha-node", "-F", "json"]);
    assert!(status.contains("\"manageable\"") || status.contains("\"enroll\""), "{status}");
    assert_eq!(alice.post("/ui/nodes/alpha-node/maintenance", &[("csrf", &csrf), ("on", "true")]).status, 303);
    let shown = site.kiln(&["node", "show", "alpha-node", "-F", "json"]);
    assert!(shown.replace(char::is_whitespace, "").contains("\"maintenance\":true"), "maintenance on: {shown}");
    assert!(alice.get("/ui/nodes/alpha-node").body.contains("End maintenance"));
    assert_eq!(alice.post("/ui/nodes/alpha-node/maintenance", &[("csrf", &csrf), ("on", "false")]).status, 303);
    let not_active = alice.post("/ui/nodes/alpha-node/capture", &[("csrf", &csrf), ("image", "nothing-here")]);
    assert_eq!(not_active.status, 404, "the API's answer: no such image to capture into: {}", not_active.body);
    let refused = alice.post("/ui/nodes/alpha-node/undeploy", &[("csrf", &csrf)]);
    assert_eq!(refused.status, 409, "the lifecycle's refusal, in its words: {}", refused.body);
    assert_eq!(alice.post("/ui/nodes/beta-node/manage", &[("csrf", &csrf)]).status, 404, "another project's node");
    let badly_timed = alice.post("/ui/nodes/alpha-node/deploy", &[("csrf", &csrf), ("image", "debian"), ("start_at", "tomorrow")]);
    assert_eq!(badly_timed.status, 400);
    assert!(badly_timed.body.contains("start: &#x27;tomorrow&#x27; is not a date and time"), "{}", badly_timed.body);
    let bad_hint = alice.post("/ui/nodes/alpha-node/deploy", &[("csrf", &csrf), ("image", "debian"), ("root_device", "colour=red")]);
    assert!(bad_hint.body.contains("unknown root device hint"), "{}", bad_hint.body);

    // An API token made in the console works for the CLI, until it is revoked there.
    let made = alice.post("/ui/tokens", &[("csrf", &csrf), ("name", "laptop"), ("expires_in_days", "30")]);
    assert_eq!(made.status, 201, "{}", made.body);
    let start = made.body.find(r#"id="secret" readonly value=""#).unwrap() + r#"id="secret" readonly value=""#.len();
    let secret = made.body[start..].split('"').next().unwrap().to_owned();
    let listed = ok(kiln(&site.server, &secret, &["node", "list"], None));
    assert!(listed.contains("alpha-node") && !listed.contains("beta-node"), "{listed}");
    assert_eq!(alice.post("/ui/tokens", &[("csrf", &csrf), ("name", "x"), ("expires_in_days", "soon")]).status, 400);
    let tokens = alice.get("/ui/tokens");
    let revoke_at = tokens.body.find("/ui/tokens/").unwrap();
    let revoke_path = tokens.body[revoke_at..].split('"').next().unwrap().replace("&#x2f;", "/");
    assert_eq!(alice.post(&revoke_path, &[("csrf", &csrf)]).status, 303);
    assert!(!kiln(&site.server, &secret, &["node", "list"], None).status.success(), "a revoked token no longer works");

    // Bob's session sees none of alice's, and alice's CSRF token is not his.
    let mut bob = Browser::new(&site.server);
    assert_eq!(bob.sign_in("bob", "bob-long-password").status, 303);
    assert_eq!(bob.get("/ui/nodes/alpha-node").status, 404);
    assert!(!bob.get("/ui/nodes").body.contains("alpha-node"));
    assert_eq!(bob.post("/ui/nodes/beta-node/manage", &[("csrf", &csrf)]).status, 403);

    // Signing out ends the session on the server, not only in the browser.
    let kept = alice.cookies.clone();
    let out = alice.post("/ui/sign-out", &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert!(!alice.cookies.contains_key("kiln_session"));
    alice.cookies = kept;
    assert_eq!(alice.get("/ui/nodes").status, 303, "the old cookie leads to the sign-in page");
    assert!(!site.server.log().contains("alice-long-password"), "the password is in no log");
}

#[test]
fn sign_in_is_refused_without_its_form_token_after_repeated_failures_and_after_expiry() {
    let site = Site::start("[web]\nsession_lifetime_seconds = 10\n");
    let mut browser = Browser::new(&site.server);

    // Another site's form: no sign-in cookie, or a token that is not the cookie's.
    let forged = browser.post("/ui/sign-in", &[("csrf", "guess"), ("user", "alice"), ("password", "alice-long-password")]);
    assert_eq!(forged.status, 403, "{}", forged.body);
    browser.get("/ui/sign-in");
    let mismatched = browser.post("/ui/sign-in", &[("csrf", "guess"), ("user", "alice"), ("password", "alice-long-password")]);
    assert_eq!(mismatched.status, 403);

    // Ten wrong passwords in a row: each refused with the same answer, and then the account
    // is locked, so that the right password is refused for a while too.
    for _ in 0..10 {
        let wrong = browser.sign_in("bob", "guessing-password");
        assert_eq!(wrong.status, 401);
        assert!(wrong.body.contains("invalid user name or password"));
    }
    assert_eq!(browser.sign_in("bob", "bob-long-password").status, 401, "locked after repeated failures");

    // A session ends at its time, whatever the browser keeps.
    assert_eq!(browser.sign_in("alice", "alice-long-password").status, 303);
    assert_eq!(browser.get("/ui/nodes").status, 200);
    std::thread::sleep(std::time::Duration::from_secs(11));
    assert_eq!(browser.get("/ui/nodes").status, 303, "an expired session leads to the sign-in page");
}

#[test]
fn assets_are_built_in_and_cached_forever_and_pages_stay_light() {
    let site = Site::start("");
    let mut browser = Browser::new(&site.server);
    assert_eq!(browser.sign_in("alice", "alice-long-password").status, 303);
    let page = browser.get("/ui/nodes");
    let stylesheet = page.body.split("href=\"").find_map(|rest| rest.split('"').next().filter(|link| link.contains(".css"))).unwrap();
    let stylesheet = stylesheet.replace("&#x2f;", "/");
    let css = browser.get(&stylesheet);
    assert_eq!(css.status, 200);
    assert!(css.header("cache-control").unwrap().contains("immutable"));
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    assert_eq!(browser.get("/ui/assets/console.css").status, 404);
    assert!(page.body.len() + css.body.len() < 60_000, "a page and its stylesheet are small");
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "nothing from another host");
}

#[test]
fn an_administrator_manages_projects_users_and_allocation_and_nobody_else_may() {
    let site = Site::start("");
    ok(kiln(&site.server, &site.admin, &["user", "set-password", "admin"], Some("admin-long-password\n")));
    site.kiln(&["node", "create", "-d", "{name: gamma-node}"]);

    // A member has no administration: not in the navigation, and refused as the API refuses.
    let mut alice = Browser::new(&site.server);
    alice.sign_in("alice", "alice-long-password");
    let nodes = alice.get("/ui/nodes");
    assert!(!nodes.body.contains("/ui/admin"), "no Administration link for a member");
    assert_eq!(alice.get("/ui/admin").status, 403);
    let csrf = nodes.csrf();
    assert_eq!(alice.post("/ui/admin/projects", &[("csrf", &csrf), ("name", "sneaky")]).status, 403);
    assert!(!site.kiln(&["project", "list"]).contains("sneaky"));

    let mut admin = Browser::new(&site.server);
    assert_eq!(admin.sign_in("admin", "admin-long-password").status, 303);
    let page = admin.get("/ui/admin");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("alice (member)") && page.body.contains("beta"), "{}", page.body);
    let csrf = page.csrf();
    let refused = admin.post("/ui/admin/projects", &[("csrf", &csrf), ("name", "Bad Name!")]);
    assert_eq!(refused.status, 400, "the API's validation, shown on the page");
    assert!(refused.body.contains("class=\"error\""), "{}", refused.body);
    for (path, form) in [
        ("/ui/admin/projects", vec![("name", "gamma"), ("description", "a third lab")]),
        ("/ui/admin/users", vec![("name", "carol")]),
        ("/ui/admin/users/carol/password", vec![("password", "carol-first-password")]),
        ("/ui/admin/members", vec![("project", "gamma"), ("user", "carol"), ("role", "member")]),
        ("/ui/admin/allocation", vec![("project", "gamma"), ("nodes", "gamma-node"), ("action", "allocate")]),
    ] {
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend(form);
        let answer = admin.post(path, &fields);
        assert_eq!(answer.status, 303, "{path}: {}", answer.body);
    }

    // Carol signs in with the password she was given, sees her project's node, and changes
    // her password, which ends her sessions.
    let mut carol = Browser::new(&site.server);
    assert_eq!(carol.sign_in("carol", "carol-first-password").status, 303);
    assert!(carol.get("/ui/nodes").body.contains("gamma-node"));
    let csrf = carol.get("/ui/tokens").csrf();
    let differ =
        carol.post("/ui/account/password", &[("csrf", &csrf), ("password", "carol-second-pass"), ("repeated", "carol-other-pass")]);
    assert_eq!(differ.status, 400);
    assert!(differ.body.contains("the two passwords differ"));
    let changed =
        carol.post("/ui/account/password", &[("csrf", &csrf), ("password", "carol-second-pass"), ("repeated", "carol-second-pass")]);
    assert_eq!(changed.status, 303);
    assert_eq!(carol.get("/ui/nodes").status, 303, "signed out by the change");
    assert_eq!(carol.sign_in("carol", "carol-first-password").status, 401);
    assert_eq!(carol.sign_in("carol", "carol-second-pass").status, 303);

    // Boot parameters and cloud-init defaults, with the API's errors beside their fields.
    assert_eq!(alice.get("/ui/admin/boot").status, 403, "administrators only, as in the API");
    let boot = admin.get("/ui/admin/boot");
    assert_eq!(boot.status, 200);
    let csrf = boot.csrf();
    let bad_mac = admin.post("/ui/admin/boot", &[("csrf", &csrf), ("kernel", "http://boot/vmlinuz"), ("macs", "zz:zz")]);
    assert_eq!(bad_mac.status, 400, "{}", bad_mac.body);
    let beside = bad_mac.body.lines().find(|line| line.contains("id=\"boot-macs-error\"")).unwrap_or_default();
    assert!(beside.contains("zz:zz"), "the MAC's error is beside the MAC field: {}", bad_mac.body);
    assert!(bad_mac.body.contains("value=\"http:&#x2f;&#x2f;boot&#x2f;vmlinuz\""), "what was typed is kept");
    let saved = admin.post(
        "/ui/admin/boot",
        &[("csrf", &csrf), ("kernel", "http://boot/vmlinuz"), ("params", "console=ttyS0 nid={{ node.nid }}"), ("hosts", "Default")],
    );
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert!(admin.get("/ui/admin/boot").body.contains("console=ttyS0 nid={{ node.nid }}"));
    let bad_defaults =
        admin.post("/ui/admin/cloud-init", &[("csrf", &csrf), ("defaults", "cluster-name: demo\nbase-url: ftp://nowhere\n")]);
    assert_eq!(bad_defaults.status, 400);
    let beside = bad_defaults.body.lines().find(|line| line.contains("id=\"cloud-init-defaults-error\"")).unwrap_or_default();
    assert!(beside.contains("base-url"), "{}", bad_defaults.body);
    assert_eq!(admin.post("/ui/admin/cloud-init", &[("csrf", &csrf), ("defaults", "cluster-name: demo\n")]).status, 303);
    assert!(admin.get("/ui/admin/boot").body.contains("cluster-name: demo"));
    let deleted = admin.post("/ui/admin/boot/delete", &[("csrf", &csrf), ("hosts", "Default")]);
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    assert!(admin.get("/ui/admin/boot").body.contains("No entries."));

    // Releasing and removing, and deleting what was made.
    let csrf = admin.get("/ui/admin").csrf();
    for (path, form) in [
        ("/ui/admin/allocation", vec![("project", "gamma"), ("nodes", "gamma-node"), ("action", "release")]),
        ("/ui/admin/members/remove", vec![("project", "gamma"), ("user", "carol")]),
        ("/ui/admin/users/carol/delete", vec![]),
        ("/ui/admin/projects/gamma/delete", vec![]),
    ] {
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend(form);
        assert_eq!(admin.post(path, &fields).status, 303, "{path}");
    }
    assert!(!site.kiln(&["project", "list"]).contains("gamma"));
    assert!(!site.server.log().contains("carol-first-password") && !site.server.log().contains("carol-second-pass"));
}

#[test]
fn a_reservation_shows_on_the_calendar_and_an_overlapping_deploy_is_refused() {
    let site = Site::start("");
    // An image of alpha's with a disk, and alpha's node available.
    let disk = site.scratch_directory().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    site.kiln(&["image", "create", "lab-os", "--project", "alpha"]);
    site.kiln(&["image", "upload", "alpha/lab-os", &format!("disk={}", disk.display())]);
    site.kiln(&["node", "manage", "alpha-node", "--wait", "--timeout", "30"]);
    site.kiln(&["node", "provide", "alpha-node", "--wait", "--timeout", "30"]);

    let mut alice = Browser::new(&site.server);
    alice.sign_in("alice", "alice-long-password");
    let csrf = alice.get("/ui/nodes/alpha-node").csrf();
    let tomorrow = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().tomorrow().unwrap();
    let start = format!("{tomorrow}T08:00");
    let end = format!("{}T08:00", tomorrow.tomorrow().unwrap());
    let reserved = alice.post(
        "/ui/nodes/alpha-node/deploy",
        &[("csrf", &csrf), ("image", "alpha/lab-os"), ("mode", "disk"), ("start_at", &start), ("end_at", &end)],
    );
    assert_eq!(reserved.status, 303, "{}", reserved.body);

    // The calendar: the node held from tomorrow 08:00 to the day after, by alpha.
    let calendar = alice.get("/ui/reservations");
    assert_eq!(calendar.status, 200);
    assert!(calendar.body.contains("alpha: alpha&#x2f;lab-os v1 (waiting)"), "{}", calendar.body);
    assert!(calendar.body.contains(&format!("{tomorrow} 08:00 to ")), "{}", calendar.body);
    let row = calendar.body.lines().find(|line| line.contains(">alpha-node</a>")).unwrap();
    let held: Vec<bool> = row.split("<td class=\"").skip(1).map(|cell| cell.starts_with("held")).collect();
    assert_eq!(&held[..3], [false, true, true], "today free, tomorrow and the day after held: {row}");
    let listed = site.kiln(&["node", "reservations"]);
    assert!(listed.contains("alpha-node") && listed.contains("alpha/lab-os:1") && listed.contains("waiting"), "{listed}");

    // Another deploy on the node is refused, saying whose time it is.
    let overlapping = alice.post("/ui/nodes/alpha-node/deploy", &[("csrf", &csrf), ("image", "alpha/lab-os")]);
    assert_eq!(overlapping.status, 409);
    assert!(overlapping.body.contains("has a deploy of alpha&#x2f;lab-os scheduled from"), "{}", overlapping.body);
    let inspect = alice.post("/ui/nodes/alpha-node/inspect", &[("csrf", &csrf)]);
    assert!(inspect.body.contains("no other request is taken for it until that deploy starts"), "{}", inspect.body);

    // Bob's project sees no reservation of alpha's.
    let mut bob = Browser::new(&site.server);
    bob.sign_in("bob", "bob-long-password");
    assert!(bob.get("/ui/reservations").body.contains("No node is reserved."));
}
