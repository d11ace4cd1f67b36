//! The users resource over HTTP, on every backend.

mod common;

use common::{ADMIN_EMAIL, TestApp, expected, header, problem, validation_errors};
use futures_util::future::join_all;
use serde_json::{Value, json};

/// `GET path`, answered 200, as JSON.
async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// The ids of a page of users, in order, without the bootstrap admin's (the oldest user).
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items is an array")
        .iter()
        .filter(|u| u["email"] != ADMIN_EMAIL)
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that no user has been stored besides the bootstrap admin.
async fn assert_no_users(app: &TestApp) {
    let page = get_json(app, "/users").await;
    assert_eq!(ids(&page), Vec::<String>::new(), "nothing was stored");
    assert_eq!(page["next_cursor"], Value::Null);
}

/// Creates a user and returns its JSON and its `ETag`.
async fn create_with_etag(app: &TestApp, email: &str, name: &str) -> (Value, String) {
    let response = app.post_user(email, name).await;
    assert_eq!(response.status(), 201, "creating {email}");
    let etag = header(&response, "etag");
    (response.json().await.unwrap(), etag)
}

/// A well-formed e-mail address of exactly `length` (250 to 257) characters: a short local
/// part and a domain of maximal labels.
fn email_of_length(length: usize) -> String {
    let label = "d".repeat(63);
    let last = "e".repeat(length - 200);
    let email = format!("ada@{label}.{label}.{label}.{last}.com");
    assert_eq!(email.chars().count(), length);
    email
}

/// A request body and the `(location, pointer, code)` errors it must get.
type Case = (Value, Vec<(&'static str, &'static str, &'static str)>);

fn user_path(user: &Value) -> String {
    format!("/users/{}", user["id"].as_str().unwrap())
}

async fn create_returns_201_with_location_and_etag(app: TestApp) {
    let response = app.post_user("ada@example.com", "  Ada Lovelace  ").await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada Lovelace", "name is trimmed");
    let id = user["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(location, format!("/users/{id}"));
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(user["created_at"], user["updated_at"]);

    let fetched = app.get(&location).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(fetched.json::<Value>().await.unwrap(), user);
}

// ---------------------------------------------------------------------------------------
// POST /users validation

async fn create_lists_every_failing_field(app: TestApp) {
    let response = app
        .post_json(
            "/users",
            &json!({"email": "not-an-email", "name": " A ", "role": "root", "is_admin": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        validation_errors(response).await,
        expected(&[
            ("body", "/email", "invalid_email"),
            ("body", "/name", "too_short"),
            ("body", "/role", "invalid_role"),
            ("body", "/is_admin", "unknown_field"),
        ])
    );
    assert_no_users(&app).await;
}

async fn create_validation_codes(app: TestApp) {
    let long_email = email_of_length(255);
    let cases: Vec<Case> = vec![
        (
            json!({"email": long_email, "name": "x".repeat(101)}),
            vec![
                ("body", "/email", "too_long"),
                ("body", "/name", "too_long"),
            ],
        ),
        (
            json!({"email": "ada@example.com", "name": "é".repeat(101)}),
            vec![("body", "/name", "too_long")],
        ),
        (
            json!({"email": "ada@example.com", "name": "Ada\u{0007}Lovelace"}),
            vec![("body", "/name", "control_character")],
        ),
        (
            json!({"email": "ada@example.com", "name": "Ada\nLovelace"}),
            vec![("body", "/name", "control_character")],
        ),
        (
            json!({"email": "a\u{0}da@example.com", "name": "Ada\u{0}"}),
            vec![
                ("body", "/email", "invalid_email"),
                ("body", "/name", "control_character"),
            ],
        ),
        (
            json!({"email": "ada@exa\u{0}mple.com", "name": "Ada"}),
            vec![("body", "/email", "invalid_email")],
        ),
        (
            json!({"email": "ada@example.com", "name": "    x    "}),
            vec![("body", "/name", "too_short")],
        ),
        (
            json!({}),
            vec![("body", "/email", "missing"), ("body", "/name", "missing")],
        ),
        (
            json!({"email": null, "name": null}),
            vec![("body", "/email", "null"), ("body", "/name", "null")],
        ),
        (
            json!({"email": 3, "name": ["Ada"]}),
            vec![("body", "/email", "type"), ("body", "/name", "type")],
        ),
        (
            json!({"email": "ada@example.com", "name": true}),
            vec![("body", "/name", "type")],
        ),
        (
            json!({"name": "Ada", "a/b": 1, "c~d": 2}),
            vec![
                ("body", "/email", "missing"),
                ("body", "/a~1b", "unknown_field"),
                ("body", "/c~0d", "unknown_field"),
            ],
        ),
    ];
    for (body, errors) in cases {
        let response = app.post_json("/users", &body).send().await.unwrap();
        assert_eq!(
            validation_errors(response).await,
            expected(&errors),
            "body {body}"
        );
    }
    assert_no_users(&app).await;
}

async fn create_rejects_a_body_that_is_not_an_object(app: TestApp) {
    for body in [json!([]), json!("ada@example.com"), json!(42), json!(null)] {
        let response = app.post_json("/users", &body).send().await.unwrap();
        assert_eq!(
            validation_errors(response).await,
            expected(&[("body", "", "type")]),
            "body {body}"
        );
    }
    assert_no_users(&app).await;
}

async fn create_accepts_boundary_lengths(app: TestApp) {
    let name = "é".repeat(100);
    let user = app.create_user("ada@example.com", &name).await;
    assert_eq!(user["name"].as_str().unwrap().chars().count(), 100);
    assert_eq!(user["name"], name.as_str());

    let two = app.create_user("al@example.com", "  Al  ").await;
    assert_eq!(two["name"], "Al");

    let email = email_of_length(254);
    let long = app.create_user(&email, "Long Address").await;
    assert_eq!(long["email"], email.as_str());
}

async fn duplicate_email_is_409_regardless_of_case(app: TestApp) {
    let first = app.create_user("ada@example.com", "Ada Lovelace").await;
    let response = app.post_user("Ada@Example.com", "Someone Else").await;
    let body = problem(response, 409).await;
    assert_eq!(body["type"], "/problems/email-taken");

    let stored = get_json(&app, &user_path(&first)).await;
    assert_eq!(stored, first, "the first user is unchanged");
    let page = get_json(&app, "/users").await;
    assert_eq!(ids(&page), [first["id"].as_str().unwrap()]);

    // An internationalised domain is one address in its Unicode and its ASCII form.
    let unicode = app
        .create_user("user@bücher.example", "Unicode Domain")
        .await;
    assert_eq!(unicode["email"], "user@xn--bcher-kva.example");
    let response = app
        .post_user("user@xn--BCHER-kva.example", "Someone Else")
        .await;
    let body = problem(response, 409).await;
    assert_eq!(body["type"], "/problems/email-taken");
}

async fn malformed_json_is_400(app: TestApp) {
    // The last two: I-JSON (RFC 7493) refuses a repeated member name rather than resolve
    // it to one of its members.
    let repeated = "appears twice";
    for (raw, detail) in [
        ("{\"email\": ", ""),
        ("not json", ""),
        ("", ""),
        ("{\"email\": \"a@b.c\",}", ""),
        (
            r#"{"email": "ada@example.com", "name": "Ada", "email": "eve@example.com"}"#,
            repeated,
        ),
        (
            r#"{"email": "ada@example.com", "name": "Ada", "name": "Ada"}"#,
            repeated,
        ),
    ] {
        let response = app
            .client
            .post(app.url("/users"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let body = problem(response, 400).await;
        assert_eq!(body["type"], "/problems/malformed-json", "body {raw:?}");
        assert!(
            body["detail"].as_str().unwrap_or("").contains(detail),
            "body {raw:?}: {body}"
        );
    }
    assert_no_users(&app).await;
}

async fn unsupported_media_type_is_415(app: TestApp) {
    let valid = json!({"email": "ada@example.com", "name": "Ada"}).to_string();
    let without = app
        .client
        .post(app.url("/users"))
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    problem(without, 415).await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = app
            .client
            .post(app.url("/users"))
            .header("content-type", content_type)
            .body(valid.clone())
            .send()
            .await
            .unwrap();
        problem(response, 415).await;
    }
    assert_no_users(&app).await;

    // Parameters and case do not matter.
    let response = app
        .client
        .post(app.url("/users"))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let user: Value = response.json().await.unwrap();
    let response = app
        .client
        .patch(app.url(&user_path(&user)))
        .header("content-type", "text/plain")
        .body(r#"{"name": "Ada King"}"#)
        .send()
        .await
        .unwrap();
    problem(response, 415).await;
    assert_eq!(get_json(&app, &user_path(&user)).await, user);
}

async fn patch_accepts_merge_patch_json(app: TestApp) {
    let user = app.create_user("ada@example.com", "Ada Lovelace").await;
    let response = app
        .client
        .patch(app.url(&user_path(&user)))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"name": "Ada King"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "Ada King");
    assert_eq!(updated["email"], "ada@example.com");
}

/// A valid `POST /users` body padded with whitespace to exactly `size` bytes.
fn padded_body(email: &str, size: usize) -> String {
    let body = json!({"email": email, "name": "Ada Lovelace"}).to_string();
    assert!(body.len() < size);
    format!("{body}{}", " ".repeat(size - body.len()))
}

async fn body_over_the_limit_is_413(backend: common::Backend) {
    let Some(app) = common::spawn_with(backend, |config| config.body_limit = 1024).await else {
        return;
    };
    let send = |body: String| {
        app.client
            .post(app.url("/users"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = send(padded_body("big@example.com", 2048)).await.unwrap();
    problem(response, 413).await;
    let response = send(padded_body("edge@example.com", 1025)).await.unwrap();
    problem(response, 413).await;
    assert_no_users(&app).await;

    let response = send(padded_body("ok@example.com", 1024)).await.unwrap();
    assert_eq!(
        response.status(),
        201,
        "a body of exactly the limit is fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_body_over_the_limit_is_413() {
    body_over_the_limit_is_413(common::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_body_over_the_limit_is_413() {
    body_over_the_limit_is_413(common::Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// GET /users/{id}

async fn get_unknown_user_is_404(app: TestApp) {
    app.create_user("ada@example.com", "Ada Lovelace").await;
    let response = app
        .get(&format!("/users/{}", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    let body = problem(response, 404).await;
    assert_eq!(body["type"], "about:blank");
}

async fn get_with_a_non_uuid_id_is_422(app: TestApp) {
    for id in ["abc", "123", "0190b6f4-8e1c-7c3a-9f3e-3b1e2a4c5d6"] {
        let response = app.get(&format!("/users/{id}")).send().await.unwrap();
        assert_eq!(
            validation_errors(response).await,
            expected(&[("path", "/id", "invalid_uuid")]),
            "id {id}"
        );
    }
}

async fn get_honours_if_none_match(app: TestApp) {
    let (user, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    let conditional = |value: &str| app.get(&path).header("if-none-match", value).send();

    let response = conditional(&etag).await.unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(header(&response, "etag"), etag);
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "304 has no body"
    );

    let response = conditional("*").await.unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(header(&response, "etag"), etag);

    // Weak comparison, and a list.
    let response = conditional(&format!("\"nope\", W/{etag}")).await.unwrap();
    assert_eq!(response.status(), 304);

    let response = conditional("\"some-other-tag\"").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag"), etag);
    assert_eq!(response.json::<Value>().await.unwrap(), user);
}

// ---------------------------------------------------------------------------------------
// GET /users

/// Creates `n` users one after the other; returns their ids, oldest first.
async fn create_many(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let user = app
            .create_user(&format!("user{i:02}@example.com"), &format!("User {i:02}"))
            .await;
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn list_is_newest_first_with_default_limit_20(app: TestApp) {
    assert_no_users(&app).await;
    let mut created = create_many(&app, 21).await;
    created.reverse();

    let response = app.get("/users").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let link = header(&response, "link");
    let page: Value = response.json().await.unwrap();
    assert_eq!(ids(&page), created[..20], "newest first, 20 by default");
    let times: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["created_at"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let cursor = page["next_cursor"].as_str().expect("a next page exists");
    assert_eq!(
        link,
        format!("</users?limit=20&cursor={cursor}>; rel=\"next\"")
    );

    let rest = get_json(&app, &format!("/users?cursor={cursor}")).await;
    assert_eq!(ids(&rest), created[20..]);
    assert_eq!(rest["next_cursor"], Value::Null);
}

async fn list_rejects_bad_parameters(app: TestApp) {
    for limit in ["0", "101", "abc", "-1", "1.5", ""] {
        let response = app
            .get("/users")
            .query(&[("limit", limit)])
            .send()
            .await
            .unwrap();
        let errors = validation_errors(response).await;
        assert_eq!(errors.len(), 1, "limit={limit:?}");
        assert_eq!(errors[0].0, "query");
        assert_eq!(errors[0].1, "/limit", "limit={limit:?}");
    }
    for cursor in ["garbage", "AAAA", "k1"] {
        let response = app
            .get("/users")
            .query(&[("cursor", cursor)])
            .send()
            .await
            .unwrap();
        let errors = validation_errors(response).await;
        assert_eq!(errors.len(), 1, "cursor={cursor:?}");
        assert_eq!(
            (errors[0].0.as_str(), errors[0].1.as_str()),
            ("query", "/cursor")
        );
    }
    for q in ["nul\u{0}", "esc\u{1b}", "c1\u{85}", &"x".repeat(255)] {
        let response = app.get("/users").query(&[("q", q)]).send().await.unwrap();
        let errors = validation_errors(response).await;
        let expected = if q.len() > 254 {
            "too_long"
        } else {
            "control_character"
        };
        assert_eq!(
            errors,
            [("query".to_owned(), "/q".to_owned(), expected.to_owned())],
            "q={q:?}"
        );
    }
    // Every failing parameter is listed.
    let response = app
        .get("/users?limit=0&cursor=garbage")
        .send()
        .await
        .unwrap();
    let pointers: Vec<String> = validation_errors(response)
        .await
        .into_iter()
        .map(|(_, pointer, _)| pointer)
        .collect();
    assert_eq!(pointers, ["/cursor", "/limit"]);
    // The bounds themselves are fine.
    for limit in ["1", "100"] {
        get_json(&app, &format!("/users?limit={limit}")).await;
    }
}

async fn list_paginates_without_gaps_or_duplicates(app: TestApp) {
    let mut created = create_many(&app, 25).await;
    created.reverse();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/users?limit=10".to_owned();
    loop {
        let response = app.get(&path).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Value = response.json().await.unwrap();
        sizes.push(page["items"].as_array().unwrap().len());
        seen.extend(ids(&page));
        let Some(cursor) = page["next_cursor"].as_str() else {
            assert_eq!(link, None, "no Link header on the last page");
            break;
        };
        let link = link.expect("a Link header when there is a next page");
        assert_eq!(
            link,
            format!("</users?limit=10&cursor={cursor}>; rel=\"next\"")
        );
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(target, _)| target.to_owned())
            .unwrap();
        let via_cursor = get_json(&app, &format!("/users?limit=10&cursor={cursor}")).await;
        let via_link = get_json(&app, &target).await;
        assert_eq!(via_link, via_cursor, "following Link gives the next page");
        path = target;
        assert!(sizes.len() < 10, "pagination does not end");
    }
    // The bootstrap admin is the oldest user.
    assert_eq!(sizes, [10, 10, 6]);
    assert_eq!(seen, created, "every user once, newest first");
}

/// The ids `GET /users?q=...` finds.
async fn search(app: &TestApp, q: &str) -> Vec<String> {
    let response = app.get("/users").query(&[("q", q)]).send().await.unwrap();
    assert_eq!(response.status(), 200, "q={q:?}");
    ids(&response.json::<Value>().await.unwrap())
}

async fn list_search_is_case_insensitive_and_literal(app: TestApp) {
    let ada = app.create_user("ada@example.com", "Ada Lovelace").await;
    let charles = app
        .create_user("charles@example.com", "Charles Babbage")
        .await;
    let grace = app.create_user("grace@navy.mil", "Grace Hopper").await;
    let percent = app.create_user("pct@example.com", "100% Sure").await;
    let snake = app.create_user("snake@example.com", "Snake_Case").await;
    let id = |user: &Value| user["id"].as_str().unwrap().to_owned();

    assert_eq!(search(&app, "LOVELACE").await, [id(&ada)]);
    assert_eq!(search(&app, "lovelace").await, [id(&ada)]);
    assert_eq!(
        search(&app, "NAVY.MIL").await,
        [id(&grace)],
        "matches the e-mail"
    );
    assert_eq!(search(&app, "babb").await, [id(&charles)]);
    assert_eq!(search(&app, "%").await, [id(&percent)], "% is literal");
    assert_eq!(search(&app, "_").await, [id(&snake)], "_ is literal");
    assert_eq!(search(&app, "a%e").await, Vec::<String>::new());
    assert_eq!(search(&app, "e_c").await, [id(&snake)]);
    assert_eq!(search(&app, "nobody").await, Vec::<String>::new());
    assert_eq!(
        search(&app, "").await.len(),
        5,
        "an empty q matches everyone"
    );

    // Search with pagination: the Link keeps q.
    let response = app
        .get("/users")
        .query(&[("q", "EXAMPLE.COM"), ("limit", "3")])
        .send()
        .await
        .unwrap();
    let link = header(&response, "link");
    let first: Value = response.json().await.unwrap();
    assert_eq!(ids(&first), [id(&snake), id(&percent), id(&charles)]);
    let cursor = first["next_cursor"].as_str().unwrap();
    assert_eq!(
        link,
        format!("</users?limit=3&q=EXAMPLE.COM&cursor={cursor}>; rel=\"next\"")
    );
    let second = get_json(
        &app,
        &format!("/users?limit=3&q=EXAMPLE.COM&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&second), [id(&ada)], "grace does not match");
    assert_eq!(second["next_cursor"], Value::Null);
}

// ---------------------------------------------------------------------------------------
// PATCH /users/{id}

async fn patch_updates_only_given_fields(app: TestApp) {
    let (user, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    let response = app
        .patch_json(&path, &json!({"name": "  Ada King  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let new_etag = header(&response, "etag");
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "Ada King");
    assert_eq!(updated["email"], "ada@example.com", "email is kept");
    assert_eq!(updated["id"], user["id"]);
    assert_eq!(updated["created_at"], user["created_at"]);
    assert_ne!(updated["updated_at"], user["updated_at"]);
    let before: chrono::DateTime<chrono::Utc> =
        user["updated_at"].as_str().unwrap().parse().unwrap();
    let after: chrono::DateTime<chrono::Utc> =
        updated["updated_at"].as_str().unwrap().parse().unwrap();
    assert!(after > before);
    assert_ne!(new_etag, etag, "the ETag changes");

    let response = app.get(&path).send().await.unwrap();
    assert_eq!(header(&response, "etag"), new_etag);
    assert_eq!(response.json::<Value>().await.unwrap(), updated);

    let response = app
        .patch_json(&path, &json!({"email": "ada.king@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["email"], "ada.king@example.com");
    assert_eq!(again["name"], "Ada King", "name is kept");
}

async fn patch_validation_codes(app: TestApp) {
    let user = app.create_user("ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    let cases: Vec<Case> = vec![
        (
            json!({"email": "nope", "name": "A", "role": "root", "is_admin": true}),
            vec![
                ("body", "/email", "invalid_email"),
                ("body", "/name", "too_short"),
                ("body", "/role", "invalid_role"),
                ("body", "/is_admin", "unknown_field"),
            ],
        ),
        (
            json!({"email": null, "name": null}),
            vec![("body", "/email", "null"), ("body", "/name", "null")],
        ),
        (
            json!({"name": "x".repeat(101)}),
            vec![("body", "/name", "too_long")],
        ),
        (
            json!({"name": "Ada\u{001b}"}),
            vec![("body", "/name", "control_character")],
        ),
        (
            json!({"email": email_of_length(255)}),
            vec![("body", "/email", "too_long")],
        ),
        (json!({"email": 7}), vec![("body", "/email", "type")]),
        (json!([]), vec![("body", "", "type")]),
    ];
    for (body, errors) in cases {
        let response = app.patch_json(&path, &body).send().await.unwrap();
        assert_eq!(
            validation_errors(response).await,
            expected(&errors),
            "body {body}"
        );
    }
    assert_eq!(get_json(&app, &path).await, user, "nothing was changed");
}

async fn patch_with_empty_object_changes_nothing(app: TestApp) {
    let (user, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    let response = app
        .patch_json(&user_path(&user), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag"), etag);
    assert_eq!(response.json::<Value>().await.unwrap(), user);
}

async fn patch_to_a_taken_email_is_409(app: TestApp) {
    app.create_user("ada@example.com", "Ada Lovelace").await;
    let grace = app.create_user("grace@example.com", "Grace Hopper").await;
    let response = app
        .patch_json(&user_path(&grace), &json!({"email": "ADA@example.com"}))
        .send()
        .await
        .unwrap();
    let body = problem(response, 409).await;
    assert_eq!(body["type"], "/problems/email-taken");
    assert_eq!(get_json(&app, &user_path(&grace)).await, grace);

    // Changing only the case of one's own address is not a conflict.
    let response = app
        .patch_json(&user_path(&grace), &json!({"email": "Grace@Example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn patch_honours_if_match(app: TestApp) {
    let (user, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    let patch = |if_match: &str, name: &str| {
        app.patch_json(&path, &json!({ "name": name }))
            .header("if-match", if_match)
            .send()
    };

    let response = patch(&etag, "Ada King").await.unwrap();
    assert_eq!(response.status(), 200);
    let current_etag = header(&response, "etag");
    let current: Value = response.json().await.unwrap();

    let response = patch(&etag, "Stale Write").await.unwrap();
    let body = problem(response, 412).await;
    assert_eq!(body["type"], "/problems/precondition-failed");
    let response = app.get(&path).send().await.unwrap();
    assert_eq!(header(&response, "etag"), current_etag);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        current,
        "unchanged"
    );

    // A weak tag never matches under the strong comparison If-Match uses.
    let response = patch(&format!("W/{current_etag}"), "Weak Write")
        .await
        .unwrap();
    problem(response, 412).await;

    let response = patch(&format!("\"x\", {current_etag}"), "Ada Listed")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = patch("*", "Ada Star").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "Ada Star");
}

async fn patch_unknown_user_is_404(app: TestApp) {
    let path = format!("/users/{}", uuid::Uuid::now_v7());
    let response = app
        .patch_json(&path, &json!({"name": "Nobody"}))
        .send()
        .await
        .unwrap();
    problem(response, 404).await;
    let response = app
        .patch_json(&path, &json!({"name": "Nobody"}))
        .header("if-match", "*")
        .send()
        .await
        .unwrap();
    problem(response, 404).await;
}

async fn malformed_if_match_is_422(app: TestApp) {
    let user = app.create_user("ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    for value in ["abc", "\"unterminated", "W/abc", ""] {
        let response = app
            .patch_json(&path, &json!({"name": "Ada King"}))
            .header("if-match", value)
            .send()
            .await
            .unwrap();
        let errors = validation_errors(response).await;
        assert_eq!(errors.len(), 1, "If-Match: {value:?}");
        assert_eq!(errors[0].0, "header", "If-Match: {value:?}");

        let response = app
            .delete(&path)
            .header("if-match", value)
            .send()
            .await
            .unwrap();
        let errors = validation_errors(response).await;
        assert_eq!(errors[0].0, "header", "If-Match: {value:?}");
    }
    assert_eq!(get_json(&app, &path).await, user);
}

// ---------------------------------------------------------------------------------------
// DELETE /users/{id}

async fn delete_removes_the_user(app: TestApp) {
    let user = app.create_user("ada@example.com", "Ada Lovelace").await;
    let other = app.create_user("grace@example.com", "Grace Hopper").await;
    let path = user_path(&user);
    let response = app.delete(&path).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());

    problem(app.get(&path).send().await.unwrap(), 404).await;
    problem(app.delete(&path).send().await.unwrap(), 404).await;
    let page = get_json(&app, "/users").await;
    assert_eq!(ids(&page), [other["id"].as_str().unwrap()]);

    // The address is free again.
    app.create_user("ada@example.com", "Ada Again").await;
}

async fn delete_honours_if_match(app: TestApp) {
    let (user, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    let response = app
        .patch_json(&path, &json!({"name": "Ada King"}))
        .send()
        .await
        .unwrap();
    let current_etag = header(&response, "etag");
    let current: Value = response.json().await.unwrap();

    let response = app
        .delete(&path)
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    let body = problem(response, 412).await;
    assert_eq!(body["type"], "/problems/precondition-failed");
    assert_eq!(
        get_json(&app, &path).await,
        current,
        "the user still exists"
    );

    let response = app
        .delete(&path)
        .header("if-match", &current_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    problem(app.get(&path).send().await.unwrap(), 404).await;
}

async fn delete_with_a_non_uuid_id_is_422(app: TestApp) {
    let response = app.delete("/users/not-a-uuid").send().await.unwrap();
    assert_eq!(
        validation_errors(response).await,
        expected(&[("path", "/id", "invalid_uuid")])
    );
}

// ---------------------------------------------------------------------------------------
// Concurrency

async fn concurrent_conditional_patches_let_exactly_one_win(app: TestApp) {
    let (user, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    let path = user_path(&user);
    let requests = (0..10).map(|i| {
        app.patch_json(&path, &json!({ "name": format!("Writer {i}") }))
            .header("if-match", &etag)
            .send()
    });
    let mut winners = Vec::new();
    let mut refused = 0;
    for response in join_all(requests).await {
        let response = response.unwrap();
        match response.status().as_u16() {
            200 => {
                let etag = header(&response, "etag");
                winners.push((etag, response.json::<Value>().await.unwrap()));
            }
            412 => {
                let body = problem(response, 412).await;
                assert_eq!(body["type"], "/problems/precondition-failed");
                refused += 1;
            }
            other => panic!(
                "unexpected status {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one write wins");
    assert_eq!(refused, 9);
    let (winner_etag, winner) = &winners[0];
    let response = app.get(&path).send().await.unwrap();
    assert_eq!(&header(&response, "etag"), winner_etag);
    assert_eq!(&response.json::<Value>().await.unwrap(), winner);
}

async fn concurrent_creates_with_one_email_make_one_user(app: TestApp) {
    let requests = (0..10).map(|i| {
        let email = if i % 2 == 0 {
            "ada@example.com"
        } else {
            "ADA@example.com"
        };
        app.post_json(
            "/users",
            &json!({"email": email, "name": format!("Ada {i}")}),
        )
        .send()
    });
    let mut created = Vec::new();
    let mut conflicts = 0;
    for response in join_all(requests).await {
        let response = response.unwrap();
        match response.status().as_u16() {
            201 => created.push(response.json::<Value>().await.unwrap()),
            409 => {
                let body = problem(response, 409).await;
                assert_eq!(body["type"], "/problems/email-taken");
                conflicts += 1;
            }
            other => panic!(
                "unexpected status {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    assert_eq!(created.len(), 1, "exactly one create wins");
    assert_eq!(conflicts, 9);
    let page = get_json(&app, "/users").await;
    assert_eq!(ids(&page), [created[0]["id"].as_str().unwrap()]);
    assert_eq!(page["items"][0], created[0]);
}

/// Many creates at once (which the server writes in shared batches): every request gets
/// the answer for its own row, a taken e-mail fails only its own request, and every 201 is
/// stored exactly as answered.
async fn concurrent_creates_each_get_their_own_answer(app: TestApp) {
    app.create_user("taken@example.com", "Already Here").await;
    let emails: Vec<String> = (0..90)
        .map(|i| match i % 3 {
            0 => format!("user{i}@example.com"),
            1 => format!("USER{}@example.com", i - 1),
            _ => "Taken@Example.com".to_owned(),
        })
        .collect();
    let requests = emails.iter().enumerate().map(|(i, email)| {
        app.post_json(
            "/users",
            &json!({"email": email, "name": format!("User {i}")}),
        )
        .send()
    });
    let mut winners: std::collections::HashMap<String, Value> = Default::default();
    for (email, response) in emails.iter().zip(join_all(requests).await) {
        let response = response.unwrap();
        let key = email.to_lowercase();
        match response.status().as_u16() {
            201 => {
                let user: Value = response.json().await.unwrap();
                assert_eq!(
                    user["email"],
                    email.as_str(),
                    "the answer is this request's row"
                );
                assert!(
                    winners.insert(key, user).is_none(),
                    "two creates won {email}"
                );
            }
            409 => assert_eq!(
                problem(response, 409).await["type"],
                "/problems/email-taken"
            ),
            other => panic!("{email}: unexpected status {other}"),
        }
    }
    assert_eq!(winners.len(), 30, "one create per distinct new e-mail");
    assert!(!winners.contains_key("taken@example.com"));
    for user in winners.values() {
        assert_eq!(&get_json(&app, &user_path(user)).await, user);
    }
    let all = get_json(&app, "/users?limit=100").await;
    assert_eq!(ids(&all).len(), 31);
}

/// `active` is part of every user: true unless an admin creates the account inactive,
/// changed by `PATCH` (with a new `ETag`, a fresh read and the list agreeing), and refused
/// when it is not a boolean.
async fn active_is_shown_set_on_create_and_patched(app: TestApp) {
    let (ada, etag) = create_with_etag(&app, "ada@example.com", "Ada Lovelace").await;
    assert_eq!(ada["active"], true);
    let inactive = app
        .post_json(
            "/users",
            &json!({"email": "grace@example.com", "name": "Grace Hopper", "active": false}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(inactive.status(), 201);
    let grace: Value = inactive.json().await.unwrap();
    assert_eq!(grace["active"], false);
    assert_eq!(get_json(&app, &user_path(&grace)).await["active"], false);

    // Read first, so that a stale cached copy would show if the write did not replace it.
    assert_eq!(get_json(&app, &user_path(&ada)).await["active"], true);
    let response = app
        .patch_json(&user_path(&ada), &json!({"active": false}))
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_ne!(header(&response, "etag"), etag, "a new revision");
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["active"], false);
    assert_eq!(patched["name"], "Ada Lovelace");
    assert_eq!(get_json(&app, &user_path(&ada)).await, patched);
    let page = get_json(&app, "/users").await;
    let listed: Vec<(String, bool)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap().to_owned(),
                u["active"].as_bool().expect("active is a boolean"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("grace@example.com".to_owned(), false),
            ("ada@example.com".to_owned(), false),
            (ADMIN_EMAIL.to_owned(), true),
        ]
    );
    // Setting it to what it is changes nothing but is accepted.
    let same = app
        .patch_json(&user_path(&grace), &json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);

    for (body, code) in [
        (json!({"active": "yes"}), "type"),
        (json!({"active": 1}), "type"),
        (json!({"active": null}), "null"),
    ] {
        let response = app
            .patch_json(&user_path(&ada), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            validation_errors(response).await,
            expected(&[("body", "/active", code)]),
            "{body}"
        );
    }
    let response = app
        .post_json(
            "/users",
            &json!({"email": "x@example.com", "name": "Xavier", "active": "no"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        validation_errors(response).await,
        expected(&[("body", "/active", "type")])
    );
}

/// `UserStore::count` counts every user, active or not.
async fn the_store_counts_every_user(app: TestApp) {
    let mut config = common::test_config(&app.data_dir);
    config.database_url = Some(secrecy::SecretString::from(app.database_url.clone()));
    let db = keel::db::Db::connect(&config).await.unwrap();
    let store = keel::users::store::UserStore::new(db.clone());
    assert_eq!(store.count().await.unwrap(), 1, "the bootstrap admin");
    app.create_user("ada@example.com", "Ada Lovelace").await;
    let grace = app.create_user("grace@example.com", "Grace Hopper").await;
    let response = app
        .patch_json(&user_path(&grace), &json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(store.count().await.unwrap(), 3);
    assert_eq!(
        app.delete(&user_path(&grace))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(store.count().await.unwrap(), 2);
    db.close().await;
}

backend_tests!(
    create_returns_201_with_location_and_etag,
    create_lists_every_failing_field,
    create_validation_codes,
    create_rejects_a_body_that_is_not_an_object,
    create_accepts_boundary_lengths,
    duplicate_email_is_409_regardless_of_case,
    malformed_json_is_400,
    unsupported_media_type_is_415,
    patch_accepts_merge_patch_json,
    get_unknown_user_is_404,
    get_with_a_non_uuid_id_is_422,
    get_honours_if_none_match,
    list_is_newest_first_with_default_limit_20,
    list_rejects_bad_parameters,
    list_paginates_without_gaps_or_duplicates,
    list_search_is_case_insensitive_and_literal,
    patch_updates_only_given_fields,
    patch_validation_codes,
    patch_with_empty_object_changes_nothing,
    patch_to_a_taken_email_is_409,
    patch_honours_if_match,
    patch_unknown_user_is_404,
    malformed_if_match_is_422,
    delete_removes_the_user,
    delete_honours_if_match,
    delete_with_a_non_uuid_id_is_422,
    concurrent_conditional_patches_let_exactly_one_win,
    concurrent_creates_with_one_email_make_one_user,
    concurrent_creates_each_get_their_own_answer,
    active_is_shown_set_on_create_and_patched,
    the_store_counts_every_user,
);
