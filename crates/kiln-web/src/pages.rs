//! The console's pages: a view per page, made from the API's own documents, and the one
//! [`Console::render`] that turns a view into HTML.

use kiln_types::ProvisionState;
use kiln_types::api::{CreatedToken, Event, Project, Token, User};
use kiln_types::image::{Image, ImageVersion};
use kiln_types::node::Node;
use kiln_types::provision::{Intent, ProvisionStatus};
use serde::Serialize;

use crate::assets::Assets;

/// A page could not be rendered: a template and its view disagree, which is Kiln's bug.
#[derive(Debug, thiserror::Error)]
#[error("rendering the console page '{template}'")]
pub struct RenderError {
    template: &'static str,
    #[source]
    source: minijinja::Error,
}

/// What every page shows around its content: who is signed in and the token their forms
/// carry against cross-site requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Frame {
    /// `None` on the sign-in page.
    pub user: Option<String>,
    pub admin: bool,
    /// The session's CSRF token, put into every form that changes something.
    pub csrf: String,
    /// A message after an action that worked, shown once.
    pub notice: Option<String>,
    /// Why the action failed, in the API's words.
    pub error: Option<String>,
}

/// One link of the navigation.
#[derive(Debug, Clone, Serialize)]
struct SectionLink {
    href: &'static str,
    label: &'static str,
    current: bool,
}

const SECTIONS: [(&str, &str); 5] = [
    ("/ui/", "Overview"),
    ("/ui/nodes", "Nodes"),
    ("/ui/reservations", "Reservations"),
    ("/ui/images", "Images"),
    ("/ui/tokens", "Account and tokens"),
];

/// The section only administrators see.
const ADMIN_SECTION: (&str, &str) = ("/ui/admin", "Administration");

/// A count of nodes in one state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StateCount {
    pub state: ProvisionState,
    pub count: usize,
}

/// The node list's filters, as the form shows them back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeFilterView {
    pub search: String,
    pub state: String,
    pub group: String,
    pub project: String,
}

/// The boot parameters form as it was sent, shown again beside its errors.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootForm {
    pub kernel: String,
    pub initrd: String,
    pub params: String,
    pub macs: String,
    pub hosts: String,
    pub nids: String,
    pub groups: String,
    pub mode: String,
}

/// Splits an API error message `FIELD: what is wrong` into the form field it names, when it
/// names one of `fields`; otherwise the message stays whole, for the top of the page.
/// An index or a nested key (`macs[0]`, `bmc.address`) names the field it is in, and stays
/// in the message.
pub fn field_of_error<'a>(message: &'a str, fields: &[&str]) -> (Option<&'a str>, &'a str) {
    let Some((path, rest)) = message.split_once(": ") else { return (None, message) };
    let field = path.split(['[', '.']).next().unwrap_or(path);
    match fields.iter().find(|candidate| **candidate == field) {
        Some(_) if path == field => (Some(field), rest),
        Some(_) => (Some(field), message),
        None => (None, message),
    }
}

/// A button that asks for a provisioning or power action.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Action {
    /// The path segment (`undeploy`) or power action (`on`) the form posts.
    pub verb: &'static str,
    pub label: &'static str,
}

/// Every page of the console.
#[derive(Debug, Clone)]
pub enum Page {
    SignIn {
        csrf: String,
        next: String,
        user: String,
    },
    Overview {
        states: Vec<StateCount>,
        total: usize,
        busy: Vec<Node>,
        failed: Vec<Node>,
        events: Vec<Event>,
    },
    Nodes {
        nodes: Vec<Node>,
        filter: NodeFilterView,
        next_href: Option<String>,
        first_href: Option<String>,
    },
    /// `console`: the node's recent serial output, as text; `console_end`: the offset after it.
    Node {
        node: Box<Node>,
        status: Box<ProvisionStatus>,
        events: Vec<Event>,
        images: Vec<String>,
        can_operate: bool,
        console: String,
        console_end: u64,
    },
    /// `projects`: where the person may create an image (`None` stands for no project, an
    /// administrator's); empty when they may create none.
    Images {
        images: Vec<Image>,
        projects: Vec<Option<String>>,
    },
    Image {
        image: Image,
        versions: Vec<ImageVersion>,
        can_upload: bool,
    },
    Tokens {
        tokens: Vec<Token>,
        created: Option<CreatedToken>,
    },
    Admin {
        projects: Vec<Project>,
        users: Vec<User>,
    },
    /// Boot parameters and cloud-init defaults, with what the form held and the API's
    /// errors by field (`defaults` for the cloud-init document, `form` for the rest).
    Boot {
        entries: Vec<kiln_types::boot::BootParams>,
        form: BootForm,
        cloud_init: String,
        errors: std::collections::BTreeMap<String, String>,
    },
    /// The reservations of the `days` days from `today` (UTC).
    Reservations {
        reservations: Vec<kiln_types::provision::Reservation>,
        today: jiff::civil::Date,
        days: u32,
    },
    Problem {
        title: String,
        message: String,
    },
}

impl Page {
    fn template(&self) -> &'static str {
        match self {
            Page::SignIn { .. } => "sign_in.html",
            Page::Overview { .. } => "overview.html",
            Page::Nodes { .. } => "nodes.html",
            Page::Node { .. } => "node.html",
            Page::Images { .. } => "images.html",
            Page::Image { .. } => "image.html",
            Page::Tokens { .. } => "tokens.html",
            Page::Admin { .. } => "admin.html",
            Page::Boot { .. } => "boot.html",
            Page::Reservations { .. } => "reservations.html",
            Page::Problem { .. } => "problem.html",
        }
    }

    /// Which navigation section the page belongs to.
    fn section(&self) -> Option<&'static str> {
        match self {
            Page::Overview { .. } => Some("/ui/"),
            Page::Nodes { .. } | Page::Node { .. } => Some("/ui/nodes"),
            Page::Images { .. } | Page::Image { .. } => Some("/ui/images"),
            Page::Tokens { .. } => Some("/ui/tokens"),
            Page::Admin { .. } | Page::Boot { .. } => Some(ADMIN_SECTION.0),
            Page::Reservations { .. } => Some("/ui/reservations"),
            Page::SignIn { .. } | Page::Problem { .. } => None,
        }
    }

    fn context(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Page::SignIn { csrf, next, user } => json!({"csrf": csrf, "next": next, "user": user}),
            Page::Overview { states, total, busy, failed, events } => {
                json!({"states": states, "total": total, "busy": busy, "failed": failed, "events": events})
            }
            Page::Nodes { nodes, filter, next_href, first_href } => json!({
                "nodes": nodes, "filter": filter, "next_href": next_href, "first_href": first_href,
                "all_states": ProvisionState::ALL.map(ProvisionState::as_str),
            }),
            Page::Node { node, status, events, images, can_operate, console, console_end } => json!({
                "node": node, "status": status, "events": events, "images": images, "can_operate": can_operate,
                "console": console, "console_end": console_end,
                "progress_percent": progress_percent(status),
                "properties": serde_json::to_string_pretty(&node.properties).unwrap_or_default(),
                "provision_actions": provision_actions(status.provision_state),
                "deployable": Intent::DEPLOYABLE_FROM.contains(&status.provision_state),
                "power_actions": POWER_ACTIONS,
            }),
            Page::Images { images, projects } => json!({
                "images": images.iter().map(|image| {
                    let mut value = serde_json::to_value(image).unwrap_or_default();
                    value["reference"] = image.scoped_name().to_string().into();
                    value
                }).collect::<Vec<_>>(),
                "projects": projects.iter().map(|project| json!({
                    "value": project.clone().unwrap_or_default(),
                    "label": project.clone().unwrap_or_else(|| "no project (administrators')".to_owned()),
                })).collect::<Vec<_>>(),
                "visibilities": ["private", "public"],
            }),
            Page::Image { image, versions, can_upload } => json!({
                "image": image, "reference": image.scoped_name().to_string(), "versions": versions, "can_upload": can_upload,
                "kinds": ["disk", "root", "kernel", "initrd"],
            }),
            Page::Tokens { tokens, created } => json!({"tokens": tokens, "created": created.as_ref().map(|created| json!({
                "name": created.token.name, "secret": created.secret,
            }))}),
            Page::Admin { projects, users } => json!({
                "projects": projects.iter().map(|project| {
                    let members: Vec<serde_json::Value> = users.iter().filter_map(|user| {
                        user.memberships.iter().find(|membership| membership.project == project.name)
                            .map(|membership| json!({"user": user.name, "role": membership.role}))
                    }).collect();
                    json!({"name": project.name, "description": project.description, "members": members})
                }).collect::<Vec<_>>(),
                "users": users,
            }),
            Page::Boot { entries, form, cloud_init, errors } => {
                json!({"entries": entries, "form": form, "cloud_init": cloud_init, "errors": errors})
            }
            Page::Reservations { reservations, today, days } => calendar(reservations, *today, *days),
            Page::Problem { title, message } => json!({"title": title, "message": message}),
        }
    }
}

/// The power buttons, in the order shown.
const POWER_ACTIONS: [Action; 4] = [
    Action { verb: "on", label: "Power on" },
    Action { verb: "off", label: "Shut down" },
    Action { verb: "force-off", label: "Power off" },
    Action { verb: "reset", label: "Reset" },
];

/// The provisioning requests (other than deploy, which has its form) that a node in `state`
/// takes: the lifecycle's own rule ([`Intent::allowed_from`]), so that no button is shown
/// that the API would refuse for the state.
pub fn provision_actions(state: ProvisionState) -> Vec<Action> {
    let offered = [
        (Intent::Manage, Action { verb: "manage", label: "Manage" }),
        (Intent::Provide, Action { verb: "provide", label: "Provide" }),
        (Intent::Inspect, Action { verb: "inspect", label: "Inspect" }),
        (Intent::Undeploy, Action { verb: "undeploy", label: "Undeploy" }),
        (Intent::Clean { mode: Default::default() }, Action { verb: "clean", label: "Clean" }),
        (Intent::Abort, Action { verb: "abort", label: "Abort" }),
    ];
    offered.into_iter().filter(|(intent, _)| intent.allowed_from().contains(&state)).map(|(_, action)| action).collect()
}

/// The calendar: one column per day from `today`, one row per reservation, a day held when
/// the reservation covers any of it.
fn calendar(reservations: &[kiln_types::provision::Reservation], today: jiff::civil::Date, days: u32) -> serde_json::Value {
    let day_list: Vec<jiff::civil::Date> =
        (0..days).filter_map(|offset| today.checked_add(jiff::Span::new().days(i64::from(offset))).ok()).collect();
    let start_of = |date: jiff::civil::Date| date.to_zoned(jiff::tz::TimeZone::UTC).map(|zoned| zoned.timestamp()).ok();
    let rows: Vec<serde_json::Value> = reservations
        .iter()
        .map(|reservation| {
            let held: Vec<bool> = day_list
                .iter()
                .map(|day| {
                    let (Some(day_start), Some(next_start)) = (start_of(*day), day.tomorrow().ok().and_then(start_of)) else {
                        return false;
                    };
                    let starts_before_day_ends = reservation.start_at.is_none_or(|start| start < next_start);
                    let ends_after_day_starts = reservation.end_at.is_none_or(|end| end > day_start);
                    starts_before_day_ends && ends_after_day_starts
                })
                .collect();
            serde_json::json!({
                "node": reservation.node, "project": reservation.project, "image": reservation.image,
                "version": reservation.version, "pending": reservation.pending,
                "start": reservation.start_at.map(|at| at.strftime("%Y-%m-%d %H:%M").to_string()),
                "end": reservation.end_at.map(|at| at.strftime("%Y-%m-%d %H:%M").to_string()),
                "days": held,
            })
        })
        .collect();
    let days: Vec<serde_json::Value> =
        day_list.iter().map(|day| serde_json::json!({"label": day.to_string(), "short": day.strftime("%a %d").to_string()})).collect();
    serde_json::json!({"rows": rows, "days": days})
}

/// How far the agent's current phase is, 0 to 100, when it knows its total.
fn progress_percent(status: &ProvisionStatus) -> Option<u64> {
    let progress = status.progress.as_ref()?;
    let total = progress.bytes_total.filter(|total| *total > 0)?;
    Some((progress.bytes_done.min(total) * 100) / total)
}

/// `text` as one segment of a URL's path or a query value: every byte but the unreserved
/// ones percent-encoded, `/` included, so that `alpha/debian` stays one segment.
fn path_segment(text: String) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The templates and assets, loaded once.
pub struct Console {
    templates: minijinja::Environment<'static>,
    assets: Assets,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    pub fn new() -> Console {
        let mut templates = minijinja::Environment::new();
        // Names end in `.html`, so minijinja escapes every value for HTML.
        for (name, text) in [
            ("base.html", include_str!("../templates/base.html")),
            ("events.html", include_str!("../templates/events.html")),
            ("sign_in.html", include_str!("../templates/sign_in.html")),
            ("overview.html", include_str!("../templates/overview.html")),
            ("nodes.html", include_str!("../templates/nodes.html")),
            ("node.html", include_str!("../templates/node.html")),
            ("images.html", include_str!("../templates/images.html")),
            ("image.html", include_str!("../templates/image.html")),
            ("tokens.html", include_str!("../templates/tokens.html")),
            ("problem.html", include_str!("../templates/problem.html")),
            ("admin.html", include_str!("../templates/admin.html")),
            ("boot.html", include_str!("../templates/boot.html")),
            ("reservations.html", include_str!("../templates/reservations.html")),
        ] {
            templates.add_template(name, text).expect("the built-in templates parse");
        }
        templates.add_filter("segment", path_segment);
        Console { templates, assets: Assets::built_in() }
    }

    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// The page's HTML.
    pub fn render(&self, frame: &Frame, page: &Page) -> Result<String, RenderError> {
        let template = page.template();
        let section = page.section();
        let admin_section = frame.admin.then_some(ADMIN_SECTION);
        let sections: Vec<SectionLink> = SECTIONS
            .iter()
            .chain(admin_section.iter())
            .map(|&(href, label)| SectionLink { href, label, current: Some(href) == section })
            .collect();
        let mut frame_value = serde_json::to_value(frame).unwrap_or_default();
        frame_value["sections"] = serde_json::to_value(sections).unwrap_or_default();
        let context = serde_json::json!({
            "frame": frame_value,
            "page": page.context(),
            "assets": {"stylesheet": self.assets.stylesheet.path, "script": self.assets.script.path},
        });
        self.templates.get_template(template).and_then(|loaded| loaded.render(context)).map_err(|source| RenderError { template, source })
    }
}

#[cfg(test)]
mod tests;
