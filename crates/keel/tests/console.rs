//! The admin console over HTTP, as a browser without JavaScript uses it: signing in and
//! out, the session cookie and its renewal, CSRF, who is let in, forms whose errors come
//! back beside their fields, a concurrent edit, and the assets' caching. The browser tests
//! (`console_browser.rs`) drive the same pages in Chromium.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, TestApp};
use serde_json::{Value, json};

/// A cookie jar and a client that follows no redirects, like a browser tab seen from the
/// server.
struct Tab {
    base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
}

/// What a page answered.
struct Page {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    /// The value of the first hidden input named `name`.
    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no input {name} in {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').expect("closing quote") + start;
        self.body[start..end]
            .replace("&#34;", "\"")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    }
}

impl Tab {
    fn new(app: &TestApp) -> Self {
        Self {
            base: app.url(""),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("request sent");
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        for cookie in &set_cookies {
            let pair = cookie.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty() || cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get("location")
                .map(|v| v.to_str().expect("ascii").to_owned()),
            set_cookies,
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.client.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    /// Signs in through the form; returns the answer to the form.
    async fn sign_in(&mut self, email: &str, password: &str, next: &str) -> Page {
        let form = self
            .get(&format!("/admin/login?next={}", urlencode(next)))
            .await;
        assert_eq!(form.status, 200);
        let csrf = form.hidden("csrf");
        self.post(
            "/admin/login",
            &[
                ("csrf", &csrf),
                ("email", email),
                ("password", password),
                ("next", next),
            ],
        )
        .await
    }

    /// Signs in as the bootstrap admin and returns the session's CSRF token.
    async fn admin(&mut self) -> String {
        let page = self.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD, "/admin/").await;
        assert_eq!(page.status, 303, "{}", page.body);
        let overview = self.get("/admin/").await;
        assert_eq!(overview.status, 200, "{}", overview.body);
        overview.hidden("csrf")
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn signed_out_browsers_go_to_sign_in_and_come_back_to_the_page_they_wanted(app: TestApp) {
    let mut tab = Tab::new(&app);
    let page = tab.get("/admin/users?q=ada").await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/admin/login?next=%2Fadmin%2Fusers%3Fq%3Dada")
    );
    let page = tab
        .sign_in(ADMIN_EMAIL, ADMIN_PASSWORD, "/admin/users?q=ada")
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some("/admin/users?q=ada"));
    let session = page
        .set_cookies
        .iter()
        .find(|c| c.starts_with("keel_console="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(session.contains(attribute), "{session}");
    }
    // No token reaches a page: the cookie is the only place it lives.
    let users = tab.get("/admin/users?q=ada").await;
    assert_eq!(users.status, 200);
    assert!(!users.body.contains("eyJ"), "a token in the page");
    assert!(users.body.contains(ADMIN_EMAIL) || users.body.contains("No users"));
    // Another site's address is never a place to come back to.
    let mut other = Tab::new(&app);
    let page = other
        .sign_in(ADMIN_EMAIL, ADMIN_PASSWORD, "//evil.example/admin/")
        .await;
    assert_eq!(page.location.as_deref(), Some("/admin/"));
    app.stop().await.unwrap();
}

async fn only_admins_get_in(app: TestApp) {
    let response = app
        .anon
        .post(app.url("/auth/register"))
        .json(&json!({"email": "plain@example.com", "name": "Plain User", "password": "plain user password 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut tab = Tab::new(&app);
    let page = tab
        .sign_in("plain@example.com", "plain user password 1", "/admin/")
        .await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("Only administrators"), "{}", page.body);
    assert!(!tab.cookies.contains_key("keel_console"));
    assert_eq!(tab.get("/admin/").await.status, 303);
    // A wrong password is the API's answer, shown on the form.
    let page = tab
        .sign_in(ADMIN_EMAIL, "not the password at all", "/admin/")
        .await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("role=\"alert\""), "{}", page.body);
    // A forged cookie is no session.
    tab.cookies
        .insert("keel_console".to_owned(), "eyJhIjoiYSJ9".to_owned());
    assert_eq!(tab.get("/admin/").await.status, 303);
    app.stop().await.unwrap();
}

async fn state_changing_forms_need_the_session_csrf_token(app: TestApp) {
    let mut tab = Tab::new(&app);
    let csrf = tab.admin().await;
    let form = [
        ("email", "csrf@example.com"),
        ("name", "Csrf Victim"),
        ("role", "admin"),
    ];
    let page = tab.post("/admin/users", &form).await;
    assert_eq!(page.status, 403, "{}", page.body);
    let mut forged = form.to_vec();
    forged.push(("csrf", "not-the-token"));
    assert_eq!(tab.post("/admin/users", &forged).await.status, 403);
    // The right token from another site is refused too (the browser says where it came from).
    let mut sent = form.to_vec();
    sent.push(("csrf", &csrf));
    let request = tab
        .client
        .post(format!("{}/admin/users", tab.base))
        .header("sec-fetch-site", "cross-site")
        .form(&sent);
    assert_eq!(tab.send(request).await.status, 403);
    let found: Value = app
        .get("/users?q=csrf")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"], json!([]), "nothing was created");
    // The sign-in form has its own token.
    let page = tab
        .post(
            "/admin/login",
            &[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)],
        )
        .await;
    assert_eq!(page.status, 403);
    // With the token, the same form works.
    let page = tab.post("/admin/users", &sent).await;
    assert_eq!(page.status, 303, "{}", page.body);
    app.stop().await.unwrap();
}

async fn forms_show_the_api_errors_beside_their_fields(app: TestApp) {
    let mut tab = Tab::new(&app);
    let csrf = tab.admin().await;
    let page = tab
        .post(
            "/admin/users",
            &[
                ("csrf", &csrf),
                ("email", "not an address"),
                ("name", "x"),
                ("role", "user"),
            ],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("id=\"email-error\""), "{}", page.body);
    assert!(page.body.contains("id=\"name-error\""), "{}", page.body);
    assert!(page.body.contains("value=\"not an address\""), "kept");
    app.create_user("taken@example.com", "Taken Already").await;
    let page = tab
        .post(
            "/admin/users",
            &[
                ("csrf", &csrf),
                ("email", "taken@example.com"),
                ("name", "Second Taker"),
                ("role", "user"),
            ],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(page.body.contains("id=\"email-error\""), "{}", page.body);
    app.stop().await.unwrap();
}

async fn a_concurrent_edit_is_a_conflict_never_an_overwrite(app: TestApp) {
    let user = app.create_user("edit@example.com", "Edited Twice").await;
    let id = user["id"].as_str().unwrap();
    let mut first = Tab::new(&app);
    let mut second = Tab::new(&app);
    let csrf_first = first.admin().await;
    let csrf_second = second.admin().await;
    let path = format!("/admin/users/{id}");
    let etag_first = first.get(&path).await.hidden("etag");
    let etag_second = second.get(&path).await.hidden("etag");
    assert_eq!(etag_first, etag_second);
    let save = |csrf: &str, etag: &str, name: &str| {
        vec![
            ("csrf".to_owned(), csrf.to_owned()),
            ("etag".to_owned(), etag.to_owned()),
            ("email".to_owned(), "edit@example.com".to_owned()),
            ("name".to_owned(), name.to_owned()),
            ("role".to_owned(), "user".to_owned()),
            ("active".to_owned(), "on".to_owned()),
        ]
    };
    let form = save(&csrf_first, &etag_first, "First Writer");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let page = first.post(&path, &form).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let form = save(&csrf_second, &etag_second, "Second Writer");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let page = second.post(&path, &form).await;
    assert_eq!(page.status, 409, "{}", page.body);
    assert!(page.body.contains("changed this user"), "{}", page.body);
    // The form now carries the stored revision and values.
    assert!(page.body.contains("value=\"First Writer\""));
    assert_ne!(page.hidden("etag"), etag_second);
    let stored: Value = app
        .get(&format!("/users/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["name"], "First Writer");
    app.stop().await.unwrap();
}

async fn an_expired_access_token_is_renewed_and_sign_out_ends_the_session(app: TestApp) {
    let mut tab = Tab::new(&app);
    tab.admin().await;
    let before = tab.cookies.get("keel_console").cloned();
    // The access token lives a second here; the refresh token renews it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let page = tab.get("/admin/users").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.set_cookies
            .iter()
            .any(|c| c.starts_with("keel_console=")),
        "the renewed session is stored"
    );
    assert_ne!(tab.cookies.get("keel_console").cloned(), before);
    let csrf = page.hidden("csrf");
    let stale = tab.cookies.clone();
    let page = tab.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/admin/login?notice=signed-out")
    );
    assert!(!tab.cookies.contains_key("keel_console"));
    // The old cookie, replayed, is no longer a session: its tokens were revoked.
    tab.cookies = stale;
    assert_eq!(tab.get("/admin/").await.status, 303);
    app.stop().await.unwrap();
}

async fn pages_keep_the_strict_policy_and_assets_are_cached_under_hashed_names(app: TestApp) {
    let mut tab = Tab::new(&app);
    tab.admin().await;
    let page = tab.get("/admin/").await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(!page.body.contains("<script>"), "no inline script");
    assert!(!page.body.contains("style="), "no inline style");
    assert!(page.body.contains("Users</span>"), "{}", page.body);
    let start = page.body.find("/admin/assets/console.").expect("an asset");
    let end = page.body[start..].find('"').unwrap() + start;
    let asset = tab.get(&page.body[start..end]).await;
    assert_eq!(asset.status, 200);
    assert_eq!(
        asset.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(tab.get("/admin/assets/console.0000.css").await.status, 404);
    app.stop().await.unwrap();
}

async fn sign_in_is_audited_and_meets_the_login_rate_limits(app: TestApp) {
    let mut tab = Tab::new(&app);
    tab.admin().await;
    let audit: Value = app
        .get("/admin/audit-events?event=login.succeeded")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logins = audit["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"));
    // The test client's own login and the console's.
    assert_eq!(logins.len(), 2, "{audit}");
    assert!(logins.iter().all(|e| e["event"] == "login.succeeded"));
    assert_eq!(logins[0]["ip"], "127.0.0.1");
    // The API's filters, which the audit page uses: by account (or actor), and validated.
    let someone = uuid::Uuid::now_v7();
    let none: Value = app
        .get(&format!("/admin/audit-events?user_id={someone}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["items"], json!([]));
    let mine: Value = app
        .get(&format!(
            "/admin/audit-events?event=login.succeeded&user_id={}&limit=1",
            logins[0]["user_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert!(
        mine["next_cursor"].is_string(),
        "the filters carry over to the next page"
    );
    for bad in ["nope", ""] {
        let response = app
            .get(&format!("/admin/audit-events?user_id={bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "user_id={bad:?}");
    }
    let page = tab.get("/admin/audit?user_id=nope").await;
    assert_eq!(page.status, 422);
    assert!(page.body.contains("id=\"user_id-error\""), "{}", page.body);
    // Two sign-ins a minute from one address here: the third is refused before the
    // password is looked at.
    let mut other = Tab::new(&app);
    let page = other
        .sign_in(ADMIN_EMAIL, "wrong password number 1", "/admin/")
        .await;
    assert_eq!(page.status, 429, "{}", page.body);
    assert!(page.headers.contains_key("retry-after"));
    app.stop().await.unwrap();
}

async fn with_login_limits(backend: Backend) -> Option<TestApp> {
    common::spawn_with(backend, |config| config.auth_rate_limit_per_minute = 2).await
}

async fn with_short_tokens(backend: Backend) -> Option<TestApp> {
    common::spawn_with(backend, |config| config.access_token_ttl_secs = 1).await
}

macro_rules! on_both_databases {
    ($($name:ident => $spawn:expr;)*) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $spawn(Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $spawn(Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

on_both_databases! {
    signed_out_browsers_go_to_sign_in_and_come_back_to_the_page_they_wanted => common::spawn;
    only_admins_get_in => common::spawn;
    state_changing_forms_need_the_session_csrf_token => common::spawn;
    forms_show_the_api_errors_beside_their_fields => common::spawn;
    a_concurrent_edit_is_a_conflict_never_an_overwrite => common::spawn;
    an_expired_access_token_is_renewed_and_sign_out_ends_the_session => with_short_tokens;
    pages_keep_the_strict_policy_and_assets_are_cached_under_hashed_names => common::spawn;
    sign_in_is_audited_and_meets_the_login_rate_limits => with_login_limits;
}
