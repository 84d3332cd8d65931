//! The web console at `/ui/`: pages for people, rendered on the server by `kiln-web` from
//! what the API's own handlers answer.
//!
//! Every page and action calls the documented `/v1` handler with the signed-in person's
//! [`Caller`](crate::auth::Caller), so the console can do exactly what that person's token
//! could through the API, and no more: tenancy, roles and validation are the API's, and
//! another project's node is the API's 404. What the console adds is sessions (`session`),
//! HTML, and a live stream of state changes (`live`).

mod admin;
mod live;
mod pages;
mod session;
mod uploads;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::sync::LazyLock;

pub use live::LiveStreams;
pub use session::WebSettings;

use crate::ApiState;

/// Where the console is served.
pub const WEB_CONSOLE_PREFIX: &str = "/ui";

static CONSOLE: LazyLock<kiln_web::Console> = LazyLock::new(kiln_web::Console::new);

/// The console's routes, and `/` sending a browser to it.
pub fn router() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/nodes", get(pages::nodes))
        .route("/ui/nodes/{node}", get(pages::node))
        .route("/ui/nodes/{node}/power", post(pages::power))
        .route("/ui/nodes/{node}/deploy", post(pages::deploy))
        .route("/ui/nodes/{node}/capture", post(pages::capture))
        .route("/ui/nodes/{node}/console", get(pages::console_output).post(pages::console_line))
        .route("/ui/nodes/{node}/maintenance", post(pages::maintenance))
        .route("/ui/nodes/{node}/{action}", post(pages::provision_action))
        .route("/ui/reservations", get(pages::reservations))
        .route("/ui/images", get(pages::images).post(pages::create_image))
        .route("/ui/images/{image}", get(pages::image))
        .route("/ui/images/{image}/versions", post(uploads::create_version))
        .route("/ui/uploads", post(uploads::create))
        // Pieces of a file are streamed to the spool, never held: no size limit applies.
        .route("/ui/uploads/{id}", get(uploads::show).patch(uploads::append).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/ui/tokens", get(pages::tokens).post(pages::create_token))
        .route("/ui/tokens/{token}/revoke", post(pages::revoke_token))
        .route("/ui/account/password", post(admin::own_password))
        .route("/ui/admin", get(admin::page))
        .route("/ui/admin/projects", post(admin::create_project))
        .route("/ui/admin/projects/{project}/delete", post(admin::delete_project))
        .route("/ui/admin/users", post(admin::create_user))
        .route("/ui/admin/users/{user}/delete", post(admin::delete_user))
        .route("/ui/admin/users/{user}/password", post(admin::user_password))
        .route("/ui/admin/members", post(admin::set_member))
        .route("/ui/admin/members/remove", post(admin::remove_member))
        .route("/ui/admin/allocation", post(admin::allocation))
        .route("/ui/admin/boot", get(admin::boot_page).post(admin::save_boot_params))
        .route("/ui/admin/boot/delete", post(admin::delete_boot_params))
        .route("/ui/admin/cloud-init", post(admin::save_cloud_init))
        .route("/ui/live", get(live::stream))
        .route("/ui/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
}

/// What every console response carries: no script or style from anywhere but here, no
/// framing, no sniffing; and pages are not cached (assets say otherwise).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The stylesheet or script, by its digest-bearing name: kept by browsers for a year.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match CONSOLE.assets().find(&format!("{}/{file}", kiln_web::assets::ASSETS_PREFIX)) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
            ],
            asset.bytes,
        )
            .into_response(),
        None => problem(StatusCode::NOT_FOUND, "Not found", "There is no such file."),
    }
}

/// A page, as HTML with `status`.
pub(crate) fn page_response(status: StatusCode, frame: &kiln_web::Frame, page: &kiln_web::Page) -> Response {
    match CONSOLE.render(frame, page) {
        Ok(html) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], html).into_response(),
        Err(error) => {
            tracing::error!(error = %kiln_types::error_chain(&error), "a console page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

/// A page that says what went wrong, without the signed-in frame.
pub(crate) fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    let page = kiln_web::Page::Problem { title: title.to_owned(), message: message.to_owned() };
    page_response(status, &kiln_web::Frame::default(), &page)
}
