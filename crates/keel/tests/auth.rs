//! Accounts and access control over HTTP, on both databases: registration, login, token
//! verification (forged, expired, foreign tokens), refresh-token rotation and reuse,
//! logout, password changes, roles and object-level access, rate limits and the audit trail.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, TestApp, header, problem, validation_errors};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

const PASSWORD: &str = "Zebra-Quartz-7781-password";

/// A session as the client holds it.
#[derive(Debug, Clone)]
struct Session {
    access: String,
    refresh: String,
}

impl Session {
    fn from(body: &Value) -> Self {
        Self {
            access: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }
}

async fn register(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.anon
        .post(app.url("/auth/register"))
        .json(&json!({"email": email, "name": "Test Person", "password": password}))
        .send()
        .await
        .unwrap()
}

/// Registers an account and returns its user JSON and session.
async fn new_account(app: &TestApp, email: &str) -> (Value, Session) {
    let response = register(app, email, PASSWORD).await;
    assert_eq!(response.status(), 201, "registering {email}");
    let body: Value = response.json().await.unwrap();
    (body["user"].clone(), Session::from(&body))
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.anon
        .post(app.url("/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn session(app: &TestApp, email: &str, password: &str) -> Session {
    let response = login(app, email, password).await;
    assert_eq!(response.status(), 200, "logging in as {email}");
    Session::from(&response.json().await.unwrap())
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.anon
        .post(app.url("/auth/refresh"))
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .unwrap()
}

async fn me(app: &TestApp, access: &str) -> reqwest::Response {
    get_as(app, "/users/me", access).await
}

/// `GET path` with `access` as the bearer token.
async fn get_as(app: &TestApp, path: &str, access: &str) -> reqwest::Response {
    app.anon
        .get(app.url(path))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

/// `POST path` without a body, with `access` as the bearer token.
async fn post_as(app: &TestApp, path: &str, access: &str) -> reqwest::Response {
    app.anon
        .post(app.url(path))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

/// The JSON of one part (0: header, 1: claims) of a JWT.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// Checks a 401 problem with the Bearer challenge; `invalid_token` when a token was sent.
async fn assert_401(response: reqwest::Response, token_sent: bool) -> Value {
    let challenge = header(&response, "www-authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"keel\""),
        "{challenge}"
    );
    assert_eq!(
        challenge.contains("error=\"invalid_token\""),
        token_sent,
        "{challenge}"
    );
    problem(response, 401).await
}

async fn register_answers_the_user_and_a_verifiable_token_pair(app: TestApp) {
    let response = register(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "cache-control"), "no-store");
    let location = header(&response, "location");
    let text = response.text().await.unwrap();
    assert!(!text.contains(PASSWORD), "the password is never answered");
    assert!(!text.contains("argon2"), "nor its hash");
    let body: Value = serde_json::from_str(&text).unwrap();
    let user = &body["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["role"], "user");
    assert_eq!(location, format!("/users/{}", user["id"].as_str().unwrap()));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap();
    assert!(
        body["refresh_token"].as_str().unwrap().len() >= 43,
        "256 random bits"
    );

    let head = jwt_part(access, 0);
    assert_eq!(head["alg"], "EdDSA");
    let claims = jwt_part(access, 1);
    assert_eq!(claims["iss"], "keel");
    assert_eq!(claims["aud"], "keel-api");
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["role"], "user");
    assert!(claims["jti"].is_string() && claims["sid"].is_string());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    // Another service verifies the token with the published key alone.
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == head["kid"])
        .expect("the token's kid is in the JWKS");
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"]),
        (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"))
    );
    let decoding = DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["keel-api"]);
    validation.set_issuer(&["keel"]);
    let verified = jsonwebtoken::decode::<Value>(access, &decoding, &validation).unwrap();
    assert_eq!(verified.claims["sub"], user["id"]);

    let me: Value = me(&app, access).await.json().await.unwrap();
    assert_eq!(&me, user);
}

async fn register_checks_every_field(app: TestApp) {
    let cases = [
        (
            json!({"email": "a@example.com", "name": "Al", "password": "x".repeat(11)}),
            "/password",
            "too_short",
        ),
        (
            json!({"email": "a@example.com", "name": "Al", "password": "x".repeat(129)}),
            "/password",
            "too_long",
        ),
        (
            json!({"email": "nope", "name": "Al", "password": PASSWORD}),
            "/email",
            "invalid_email",
        ),
        (
            json!({"email": "a@example.com", "name": "Al"}),
            "/password",
            "missing",
        ),
        (
            json!({"email": "a@example.com", "name": "Al", "password": PASSWORD, "role": "admin"}),
            "/role",
            "unknown_field",
        ),
    ];
    for (body, pointer, code) in cases {
        let response = app
            .anon
            .post(app.url("/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            validation_errors(response).await,
            [("body".to_owned(), pointer.to_owned(), code.to_owned())],
            "{body}"
        );
    }
    // Boundaries: 12 and 128 characters (not bytes) are accepted.
    assert_eq!(
        register(&app, "b12@example.com", &"é".repeat(12))
            .await
            .status(),
        201
    );
    assert_eq!(
        register(&app, "b128@example.com", &"é".repeat(128))
            .await
            .status(),
        201
    );
    new_account(&app, "taken@example.com").await;
    let taken = register(&app, "TAKEN@example.com", PASSWORD).await;
    assert_eq!(problem(taken, 409).await["type"], "/problems/email-taken");
}

async fn unknown_email_and_wrong_password_look_the_same(app: TestApp) {
    new_account(&app, "ada@example.com").await;
    // An internationalised domain logs in in either of its forms, and is one account.
    let (user, _) = new_account(&app, "grace@bücher.example").await;
    assert_eq!(user["email"], "grace@xn--bcher-kva.example");
    for email in ["grace@bücher.example", "grace@XN--BCHER-KVA.example"] {
        session(&app, email, PASSWORD).await;
    }
    let again = register(&app, "grace@xn--bcher-kva.example", PASSWORD).await;
    assert_eq!(again.status(), 409);
    let strip = |mut body: Value| {
        let object = body.as_object_mut().unwrap();
        object.remove("request_id");
        object.remove("instance");
        body
    };
    let wrong = login(&app, "ada@example.com", "not the password at all").await;
    let wrong_challenge = header(&wrong, "www-authenticate");
    let wrong = strip(problem(wrong, 401).await);
    let unknown = login(&app, "nobody@example.com", "not the password at all").await;
    let unknown_challenge = header(&unknown, "www-authenticate");
    let unknown = strip(problem(unknown, 401).await);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong_challenge, unknown_challenge);
    assert_eq!(wrong["type"], "/problems/invalid-credentials");
    // An address no account can have (PostgreSQL refuses NUL in a string) is unknown too.
    let nul = login(&app, "ada\u{0}@example.com", "not the password at all").await;
    assert_eq!(strip(problem(nul, 401).await), wrong);
    // The e-mail is matched regardless of case.
    assert_eq!(login(&app, "ADA@example.com", PASSWORD).await.status(), 200);
}

async fn refresh_rotates_and_reuse_revokes_the_family(app: TestApp) {
    let (_, first) = new_account(&app, "ada@example.com").await;
    let response = refresh(&app, &first.refresh).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "cache-control"), "no-store");
    let second = Session::from(&response.json().await.unwrap());
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(me(&app, &second.access).await.status(), 200);
    let third = Session::from(&refresh(&app, &second.refresh).await.json().await.unwrap());

    // A spent token comes back: someone else holds the family. Everything in it stops.
    let reuse = refresh(&app, &first.refresh).await;
    assert_eq!(
        problem(reuse, 401).await["type"],
        "/problems/invalid-refresh-token"
    );
    assert_eq!(refresh(&app, &third.refresh).await.status(), 401);
    assert_401(me(&app, &third.access).await, true).await;
    // Another login is another family, unaffected.
    let other = session(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(me(&app, &other.access).await.status(), 200);
    // Garbage is just invalid.
    assert_eq!(refresh(&app, "garbage").await.status(), 401);
    let empty = app
        .anon
        .post(app.url("/auth/refresh"))
        .json(&json!({"refresh_token": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 422);
}

async fn logout_ends_one_session_and_logout_all_every_one(app: TestApp) {
    let (_, one) = new_account(&app, "ada@example.com").await;
    let two = session(&app, "ada@example.com", PASSWORD).await;
    let three = session(&app, "ada@example.com", PASSWORD).await;
    let out = post_as(&app, "/auth/logout", &one.access).await;
    assert_eq!(out.status(), 204);
    assert_eq!(refresh(&app, &one.refresh).await.status(), 401);
    assert_401(me(&app, &one.access).await, true).await;
    assert_eq!(me(&app, &two.access).await.status(), 200);

    let all = post_as(&app, "/auth/logout-all", &two.access).await;
    assert_eq!(all.status(), 204);
    for session in [&two, &three] {
        assert_eq!(refresh(&app, &session.refresh).await.status(), 401);
        assert_401(me(&app, &session.access).await, true).await;
    }
    let anonymous = app.anon.post(app.url("/auth/logout")).send().await.unwrap();
    assert_401(anonymous, false).await;
}

async fn changing_the_password_ends_the_other_sessions(app: TestApp) {
    let (_, mine) = new_account(&app, "ada@example.com").await;
    let other = session(&app, "ada@example.com", PASSWORD).await;
    let change = |current: &str| {
        app.anon
            .patch(app.url("/users/me"))
            .bearer_auth(&mine.access)
            .json(&json!({"password": "a brand new passphrase", "current_password": current}))
            .send()
    };
    let refused = change("not my password at all").await.unwrap();
    assert_eq!(problem(refused, 403).await["type"], "/problems/forbidden");
    assert_eq!(
        login(&app, "ada@example.com", PASSWORD).await.status(),
        200,
        "unchanged"
    );
    assert_eq!(me(&app, &other.access).await.status(), 200);

    let changed = change(PASSWORD).await.unwrap();
    assert_eq!(changed.status(), 200);
    let text = changed.text().await.unwrap();
    assert!(
        !text.contains("brand new") && !text.contains(PASSWORD),
        "{text}"
    );
    assert_eq!(
        me(&app, &mine.access).await.status(),
        200,
        "this session goes on"
    );
    assert_401(me(&app, &other.access).await, true).await;
    assert_eq!(refresh(&app, &other.refresh).await.status(), 401);
    assert_eq!(refresh(&app, &mine.refresh).await.status(), 200);
    assert_eq!(login(&app, "ada@example.com", PASSWORD).await.status(), 401);
    assert_eq!(
        login(&app, "ada@example.com", "a brand new passphrase")
            .await
            .status(),
        200
    );
}

async fn own_account_rules(app: TestApp) {
    let (user, mine) = new_account(&app, "ada@example.com").await;
    let patch = |body: Value| {
        app.anon
            .patch(app.url("/users/me"))
            .bearer_auth(&mine.access)
            .json(&body)
            .send()
    };
    let renamed: Value = patch(json!({"name": "Ada King"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "Ada King");
    let no_password = patch(json!({"email": "ada.king@example.com"}))
        .await
        .unwrap();
    assert_eq!(
        validation_errors(no_password).await,
        [(
            "body".to_owned(),
            "/current_password".to_owned(),
            "missing".to_owned()
        )]
    );
    let with = patch(json!({"email": "ada.king@example.com", "current_password": PASSWORD}))
        .await
        .unwrap();
    assert_eq!(
        with.json::<Value>().await.unwrap()["email"],
        "ada.king@example.com"
    );
    // No mass assignment: a role in the body is refused and never applied.
    let escalate = patch(json!({"role": "admin"})).await.unwrap();
    assert_eq!(
        validation_errors(escalate).await,
        [(
            "body".to_owned(),
            "/role".to_owned(),
            "unknown_field".to_owned()
        )]
    );
    let stored: Value = app
        .get(&format!("/users/{}", user["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["role"], "user");
}

async fn users_reach_only_their_own_record(app: TestApp) {
    let (ada, ada_session) = new_account(&app, "ada@example.com").await;
    let (grace, _) = new_account(&app, "grace@example.com").await;
    let as_ada = |method: reqwest::Method, path: String| {
        app.anon
            .request(method, app.url(&path))
            .bearer_auth(&ada_session.access)
    };
    let grace_path = format!("/users/{}", grace["id"].as_str().unwrap());
    let ada_path = format!("/users/{}", ada["id"].as_str().unwrap());
    let unknown_path = format!("/users/{}", uuid::Uuid::now_v7());

    // Another user's record and a record that does not exist are indistinguishable.
    let strip = |mut body: Value| {
        let object = body.as_object_mut().unwrap();
        object.remove("request_id");
        object.remove("instance");
        body
    };
    let theirs = strip(
        problem(
            as_ada(reqwest::Method::GET, grace_path.clone())
                .send()
                .await
                .unwrap(),
            404,
        )
        .await,
    );
    let nobody = strip(
        problem(
            as_ada(reqwest::Method::GET, unknown_path)
                .send()
                .await
                .unwrap(),
            404,
        )
        .await,
    );
    assert_eq!(theirs, nobody);
    let patch = as_ada(reqwest::Method::PATCH, grace_path.clone())
        .json(&json!({"name": "Hacked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 404);
    let delete = as_ada(reqwest::Method::DELETE, grace_path.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404);
    let still: Value = app
        .get(&grace_path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still["name"], "Test Person", "nothing changed");

    // Admin-only operations are 403 to a user.
    let list = as_ada(reqwest::Method::GET, "/users".to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(problem(list, 403).await["type"], "/problems/forbidden");
    let create = as_ada(reqwest::Method::POST, "/users".to_owned())
        .json(&json!({"email": "new@example.com", "name": "New One"}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 403);
    let audit = as_ada(reqwest::Method::GET, "/admin/audit-events".to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(audit.status(), 403);

    // Their own record they may read and change, but not their role.
    assert_eq!(
        as_ada(reqwest::Method::GET, ada_path.clone())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let escalate = as_ada(reqwest::Method::PATCH, ada_path.clone())
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(escalate, 403).await["type"], "/problems/forbidden");
    let stored: Value = app
        .get(&ada_path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["role"], "user");
    let renamed = as_ada(reqwest::Method::PATCH, ada_path.clone())
        .json(&json!({"name": "Ada B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
}

async fn an_admin_changes_roles_and_the_new_role_takes_effect(app: TestApp) {
    let (ada, old) = new_account(&app, "ada@example.com").await;
    let path = format!("/users/{}", ada["id"].as_str().unwrap());
    let promoted = app
        .patch_json(&path, &json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(promoted.json::<Value>().await.unwrap()["role"], "admin");
    // The sessions that carried the old role are over.
    assert_401(me(&app, &old.access).await, true).await;
    assert_eq!(refresh(&app, &old.refresh).await.status(), 401);
    let new = session(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(jwt_part(&new.access, 1)["role"], "admin");
    let list = get_as(&app, "/users", &new.access).await;
    assert_eq!(list.status(), 200);
    // An admin creates users with a password and a role.
    let created = app
        .post_json("/users", &json!({"email": "grace@example.com", "name": "Grace", "password": PASSWORD, "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.json::<Value>().await.unwrap()["role"], "admin");
    let grace = session(&app, "grace@example.com", PASSWORD).await;
    assert_eq!(jwt_part(&grace.access, 1)["role"], "admin");
    // A user created without a password cannot log in.
    app.create_user("nopass@example.com", "No Password").await;
    assert_eq!(
        login(&app, "nopass@example.com", PASSWORD).await.status(),
        401
    );
}

async fn bad_credentials_are_401_never_500(app: TestApp) {
    let (_, ada) = new_account(&app, "ada@example.com").await;
    let call = |value: String| {
        app.anon
            .get(app.url("/users/me"))
            .header("authorization", value)
            .send()
    };
    let missing = app.anon.get(app.url("/users/me")).send().await.unwrap();
    assert_401(missing, false).await;
    let mut parts: Vec<String> = ada.access.split('.').map(str::to_owned).collect();
    let flip = |text: &str| {
        let mut chars: Vec<char> = text.chars().collect();
        let middle = chars.len() / 2;
        chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let tampered_payload = format!("{}.{}.{}", parts[0], flip(&parts[1]), parts[2]);
    let tampered_signature = format!("{}.{}.{}", parts[0], parts[1], flip(&parts[2]));
    // alg: none with the real claims and no signature.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // HS256 "signed" with the public key as the secret (algorithm confusion).
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
    let confused = jsonwebtoken::encode(
        &hs_header,
        &jwt_part(&ada.access, 1),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    // The same claims under an unknown kid.
    let head = jwt_part(&ada.access, 0);
    let mut other_kid = head.clone();
    other_kid["kid"] = json!("not-a-key-of-keel");
    parts[0] = URL_SAFE_NO_PAD.encode(other_kid.to_string());
    let unknown_kid = parts.join(".");
    for value in [
        format!("Bearer {tampered_payload}"),
        format!("Bearer {tampered_signature}"),
        format!("Bearer {alg_none}"),
        format!("Bearer {confused}"),
        format!("Bearer {unknown_kid}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Basic YWRhOnBhc3N3b3Jk".to_owned(),
        format!("Bearer {}", "a".repeat(10_000)),
        "Bearer not.a.jwt".to_owned(),
    ] {
        let response = call(value.clone()).await.unwrap();
        assert_eq!(response.status(), 401, "{value:.60}");
        assert_401(response, true).await;
    }
    // And the genuine token still works.
    assert_eq!(
        call(format!("bearer {}", ada.access))
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn the_audit_trail_records_security_events(app: TestApp) {
    let (ada, first) = new_account(&app, "ada@example.com").await;
    assert_eq!(
        login(&app, "ada@example.com", "wrong password here")
            .await
            .status(),
        401
    );
    assert_eq!(
        login(&app, "ghost@example.com", "wrong password here")
            .await
            .status(),
        401
    );
    let next = Session::from(&refresh(&app, &first.refresh).await.json().await.unwrap());
    assert_eq!(refresh(&app, &first.refresh).await.status(), 401);
    let fresh = session(&app, "ada@example.com", PASSWORD).await;
    let changed = app
        .anon
        .patch(app.url("/users/me"))
        .bearer_auth(&fresh.access)
        .json(&json!({"password": "another long passphrase", "current_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let path = format!("/users/{}", ada["id"].as_str().unwrap());
    assert_eq!(
        app.patch_json(&path, &json!({"role": "admin"}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(next);

    let page: Value = app
        .get("/admin/audit-events?limit=100")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events: Vec<(String, Value)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    let find = |name: &str| {
        events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(find("account.registered")[0]["user_id"], ada["id"]);
    let failures = find("login.failed");
    assert_eq!(failures.len(), 2, "{events:?}");
    assert!(failures.iter().any(|e| e["user_id"] == ada["id"]));
    assert!(failures.iter().any(|e| e["user_id"].is_null()));
    assert!(!find("login.succeeded").is_empty());
    assert_eq!(find("refresh.reused")[0]["user_id"], ada["id"]);
    assert_eq!(find("password.changed")[0]["user_id"], ada["id"]);
    let role = &find("role.changed")[0];
    assert_eq!(role["user_id"], ada["id"]);
    assert_eq!(role["detail"], "user -> admin");
    assert!(role["actor_id"].is_string());
    assert!(
        !page.to_string().contains(PASSWORD),
        "no secret in the trail"
    );
    // Newest first, paginated.
    let first_page: Value = app
        .get("/admin/audit-events?limit=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first_page["items"].as_array().unwrap().len(), 2);
    assert_eq!(first_page["items"][0]["event"], "role.changed");
    let cursor = first_page["next_cursor"].as_str().expect("more pages");
    let second: Value = app
        .get(&format!("/admin/audit-events?limit=2&cursor={cursor}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(second["items"][0]["id"], first_page["items"][0]["id"]);
}

/// The JSON of `GET /users/me` as the bootstrap admin: their own record.
async fn admin_record(app: &TestApp) -> Value {
    let response = app.get("/users/me").send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The audit events named `event`, newest first.
async fn audit_events(app: &TestApp, event: &str) -> Vec<Value> {
    let page: Value = app
        .get("/admin/audit-events?limit=100")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page of audit events: {page}"))
        .iter()
        .filter(|e| e["event"] == event)
        .cloned()
        .collect()
}

/// An admin deactivates an account: its sessions end at once, it cannot log in (answered
/// exactly as a wrong password), refresh or get a reset e-mail; reactivated, it logs in
/// again. Only an admin may do it, and not to their own account; both changes are audited.
async fn a_deactivated_account_is_locked_out_until_reactivated(app: TestApp) {
    let (ada, one) = new_account(&app, "ada@example.com").await;
    assert_eq!(ada["active"], true);
    let two = session(&app, "ada@example.com", PASSWORD).await;
    let path = format!("/users/{}", ada["id"].as_str().unwrap());

    // The account's owner cannot change it, even on their own record.
    let own = app
        .anon
        .patch(app.url(&path))
        .bearer_auth(&one.access)
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    problem(own, 403).await;
    let own = app
        .anon
        .patch(app.url(&path))
        .bearer_auth(&one.access)
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap();
    problem(own, 403).await;
    assert_eq!(me(&app, &one.access).await.status(), 200);

    let off = app
        .patch_json(&path, &json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    let off: Value = off.json().await.unwrap();
    assert_eq!(off["active"], false);
    assert_eq!(off["email"], "ada@example.com");
    let shown: Value = app.get(&path).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["active"], false);

    // Every session is over: access and refresh tokens alike.
    for session in [&one, &two] {
        assert_401(me(&app, &session.access).await, true).await;
        assert_eq!(refresh(&app, &session.refresh).await.status(), 401);
    }
    // The right password is answered as a wrong one.
    let strip = |mut body: Value| {
        let object = body.as_object_mut().unwrap();
        object.remove("request_id");
        object.remove("instance");
        body
    };
    let right = login(&app, "ada@example.com", PASSWORD).await;
    let right_challenge = header(&right, "www-authenticate");
    let right = strip(problem(right, 401).await);
    let wrong = login(&app, "ada@example.com", "not the password at all").await;
    let wrong_challenge = header(&wrong, "www-authenticate");
    assert_eq!(right, strip(problem(wrong, 401).await));
    assert_eq!(right_challenge, wrong_challenge);
    assert_eq!(right["type"], "/problems/invalid-credentials");

    // A reset e-mail is asked for (202, as for any address) but never sent.
    let forgot = app
        .anon
        .post(app.url("/auth/forgot-password"))
        .json(&json!({"email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), 202);
    common::eventually(20, "the reset job to finish", || async {
        let page: Value = app
            .get("/jobs?kind=email.password_reset&state=succeeded")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    let resets = common::mail_files(&app.data_dir)
        .into_iter()
        .filter(|mail| mail.to.contains("ada@example.com") && mail.subject.contains("password"))
        .count();
    assert_eq!(resets, 0, "no reset e-mail for a deactivated account");

    // An admin cannot lock themselves out.
    let admin = admin_record(&app).await;
    let admin_path = format!("/users/{}", admin["id"].as_str().unwrap());
    let myself = app
        .patch_json(&admin_path, &json!({"active": false}))
        .send()
        .await
        .unwrap();
    let body = problem(myself, 409).await;
    assert_eq!(body["type"], "/problems/cannot-deactivate-self");
    assert_eq!(admin_record(&app).await["active"], true);
    // Not a boolean: a validation error.
    let invalid = app
        .patch_json(&path, &json!({"active": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        validation_errors(invalid).await,
        common::expected(&[("body", "/active", "type")])
    );

    // Reactivated, the account logs in again (and a new password reset would be sent).
    let on = app
        .patch_json(&path, &json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(on.status(), 200);
    assert_eq!(on.json::<Value>().await.unwrap()["active"], true);
    let back = session(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(me(&app, &back.access).await.status(), 200);
    assert_eq!(refresh(&app, &back.refresh).await.status(), 200);

    // Both changes are in the audit trail, naming the admin; the refused login says why.
    for (event, count) in [("account.deactivated", 1), ("account.reactivated", 1)] {
        let found = audit_events(&app, event).await;
        assert_eq!(found.len(), count, "{event}: {found:?}");
        assert_eq!(found[0]["user_id"], ada["id"]);
        assert_eq!(found[0]["actor_id"], admin["id"]);
    }
    let failures = audit_events(&app, "login.failed").await;
    assert!(
        failures
            .iter()
            .any(|e| e["user_id"] == ada["id"] && e["detail"] == "account deactivated"),
        "{failures:?}"
    );
}

/// A session refreshed while its account is being deactivated cannot outlive it: a
/// refresh token presented after the change is refused even if it was not revoked yet.
async fn a_deactivated_account_cannot_refresh(app: TestApp) {
    let (ada, first) = new_account(&app, "ada@example.com").await;
    let path = format!("/users/{}", ada["id"].as_str().unwrap());
    // Deactivate straight in the table (as a second instance mid-way through its request
    // might leave it: the flag written, the sessions not revoked yet).
    let sql = match app.backend {
        Backend::Sqlite => "UPDATE users SET active = 0",
        Backend::Postgres => "UPDATE users SET active = false",
    };
    let statement = format!("{sql} WHERE lower(email) = 'ada@example.com'");
    run_sql(&app, &statement).await;
    let response = refresh(&app, &first.refresh).await;
    assert_eq!(
        problem(response, 401).await["type"],
        "/problems/invalid-refresh-token"
    );
    // And the session is revoked for good: reactivating does not bring it back.
    let statement = match app.backend {
        Backend::Sqlite => "UPDATE users SET active = 1",
        Backend::Postgres => "UPDATE users SET active = true",
    };
    run_sql(&app, statement).await;
    assert_eq!(refresh(&app, &first.refresh).await.status(), 401);
    let shown: Value = app.get(&path).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["email"], "ada@example.com");
}

/// Runs one statement on the test server's database.
async fn run_sql(app: &TestApp, statement: &str) {
    use sqlx::Connection;
    match app.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
    }
}

/// `POST /users/{id}/logout`: an admin ends every session of an account, which can log
/// in again; audited as `logout.all` with the admin as actor. Admins only.
async fn an_admin_ends_every_session_of_a_user(app: TestApp) {
    let (ada, one) = new_account(&app, "ada@example.com").await;
    let two = session(&app, "ada@example.com", PASSWORD).await;
    let (_, bob) = new_account(&app, "bob@example.com").await;
    let path = format!("/users/{}/logout", ada["id"].as_str().unwrap());

    // Not for anyone but an admin, not even the account itself.
    assert_401(app.anon.post(app.url(&path)).send().await.unwrap(), false).await;
    problem(post_as(&app, &path, &one.access).await, 403).await;
    assert_eq!(me(&app, &one.access).await.status(), 200);

    let response = app.client.post(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 204);
    for session in [&one, &two] {
        assert_401(me(&app, &session.access).await, true).await;
        assert_eq!(refresh(&app, &session.refresh).await.status(), 401);
    }
    // Other accounts keep their sessions; the account itself can log in again.
    assert_eq!(me(&app, &bob.access).await.status(), 200);
    let again = session(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(me(&app, &again.access).await.status(), 200);

    let admin = admin_record(&app).await;
    let logged = audit_events(&app, "logout.all").await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["user_id"], ada["id"]);
    assert_eq!(logged[0]["actor_id"], admin["id"]);

    let unknown = format!("/users/{}/logout", uuid::Uuid::now_v7());
    let missing = app.client.post(app.url(&unknown)).send().await.unwrap();
    problem(missing, 404).await;
    let bad = app
        .client
        .post(app.url("/users/not-a-uuid/logout"))
        .send()
        .await
        .unwrap();
    problem(bad, 422).await;
}

backend_tests!(
    register_answers_the_user_and_a_verifiable_token_pair,
    register_checks_every_field,
    unknown_email_and_wrong_password_look_the_same,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_ends_one_session_and_logout_all_every_one,
    changing_the_password_ends_the_other_sessions,
    own_account_rules,
    users_reach_only_their_own_record,
    an_admin_changes_roles_and_the_new_role_takes_effect,
    bad_credentials_are_401_never_500,
    the_audit_trail_records_security_events,
    a_deactivated_account_is_locked_out_until_reactivated,
    a_deactivated_account_cannot_refresh,
    an_admin_ends_every_session_of_a_user,
);

/// Tokens outlive nothing: with a one-second lifetime, a token is refused two seconds later.
async fn expired_tokens_are_refused(backend: Backend) {
    let Some(app) = common::spawn_with(backend, |c| c.access_token_ttl_secs = 1).await else {
        return;
    };
    let admin = session(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(me(&app, &admin.access).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_401(me(&app, &admin.access).await, true).await;
    // The refresh token lives longer and gets a fresh access token.
    let renewed = Session::from(&refresh(&app, &admin.refresh).await.json().await.unwrap());
    assert_eq!(me(&app, &renewed.access).await.status(), 200);
}

/// Tokens signed with keel's own key but for another audience or issuer are refused.
async fn other_audiences_and_issuers_are_refused(backend: Backend) {
    let Some(app) = common::spawn(backend).await else {
        return;
    };
    for (audience, issuer) in [("billing", "keel"), ("keel-api", "someone-else")] {
        let data_dir = app.data_dir.clone();
        let Some(other) = common::spawn_with(backend, |c| {
            // Same signing key (generated under the first server's data directory).
            c.jwt_private_key_file = Some(data_dir.join("jwt-ed25519.pem"));
            c.jwt_audience = audience.to_owned();
            c.jwt_issuer = issuer.to_owned();
        })
        .await
        else {
            return;
        };
        let foreign = session(&other, ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(jwt_part(&foreign.access, 1)["aud"], audience);
        assert_eq!(
            jwt_part(&foreign.access, 0)["kid"],
            jwt_part(&app.admin_token, 0)["kid"],
            "same key"
        );
        let refused = get_as(&app, "/admin/audit-events", &foreign.access).await;
        assert_401(refused, true).await;
    }
}

/// Rotating the signing key logs nobody out: the previous key still verifies, and both
/// public keys are published.
async fn rotating_the_key_keeps_old_tokens_valid(backend: Backend) {
    let Some(old) = common::spawn(backend).await else {
        return;
    };
    let Some(fresh) = common::spawn(backend).await else {
        return;
    };
    let old_key = old.data_dir.join("jwt-ed25519.pem");
    let new_key = fresh.data_dir.join("jwt-ed25519.pem");
    let Some(rotated) = common::spawn_with(backend, |c| {
        c.jwt_private_key_file = Some(new_key.clone());
        c.jwt_previous_key_files = vec![old_key.clone()];
    })
    .await
    else {
        return;
    };
    let jwks: Value = rotated
        .get("/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let old_kid = jwt_part(&old.admin_token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_kid = jwt_part(&fresh.admin_token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        kids,
        [new_kid.as_str(), old_kid.as_str()],
        "current key first"
    );
    assert_eq!(
        jwt_part(&rotated.admin_token, 0)["kid"],
        new_kid.as_str(),
        "new tokens use the new key"
    );
    // A token of the old key (an admin of another database: the route needs no row of it).
    let response = get_as(&rotated, "/admin/audit-events", &old.admin_token).await;
    assert_eq!(response.status(), 200);
    // Without the previous key configured, that token is refused.
    let response = get_as(&fresh, "/admin/audit-events", &old.admin_token).await;
    assert_401(response, true).await;
}

/// The strict limit on credential routes: exhausted, answered 429 with the headers.
async fn credential_routes_are_rate_limited(backend: Backend) {
    let Some(app) = common::spawn_with(backend, |c| {
        c.rate_limit_per_minute = 1000;
        c.auth_rate_limit_per_minute = 3;
    })
    .await
    else {
        return;
    };
    // The harness's own login used the first of the three.
    for remaining in [1, 0] {
        let response = login(&app, "ghost@example.com", "wrong password here").await;
        assert_eq!(response.status(), 401);
        assert_eq!(
            header(&response, "ratelimit-policy"),
            "\"general\";q=1000;w=60, \"auth\";q=3;w=60"
        );
        let state = header(&response, "ratelimit");
        assert!(
            state.contains(&format!("\"auth\";r={remaining};")),
            "{state}"
        );
    }
    let refused = login(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(header(&refused, "ratelimit").contains(&format!("\"auth\";r=0;t={retry}")));
    assert_eq!(header(&refused, "x-content-type-options"), "nosniff");
    let body = problem(refused, 429).await;
    assert_eq!(body["type"], "/problems/rate-limited");
    // Other routes only meet the general limit.
    let other = app.get("/users/me").send().await.unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(
        header(&other, "ratelimit-policy"),
        "\"general\";q=1000;w=60"
    );
}

/// The general limit counts per client, resets as time passes, and reads
/// X-Forwarded-For only from a trusted proxy.
async fn the_general_limit_is_per_client_and_resets(backend: Backend) {
    let Some(app) = common::spawn_with(backend, |c| {
        c.rate_limit_per_minute = 60;
        c.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await
    else {
        return;
    };
    let from = |client: &str| app.get("/livez").header("x-forwarded-for", client).send();
    for _ in 0..60 {
        assert_eq!(from("203.0.113.1").await.unwrap().status(), 200);
    }
    let refused = from("203.0.113.1").await.unwrap();
    assert_eq!(
        problem(refused, 429).await["type"],
        "/problems/rate-limited"
    );
    // Another client behind the same proxy has its own quota; a spoofed left-most entry
    // does not make the first client another one.
    assert_eq!(from("203.0.113.2").await.unwrap().status(), 200);
    assert_eq!(
        from("198.51.100.9, 203.0.113.1").await.unwrap().status(),
        429
    );
    // One request comes back every second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(from("203.0.113.1").await.unwrap().status(), 200);

    // Without a trusted proxy, X-Forwarded-For is the client's word and ignored.
    // Three a minute, one of which the harness's own login used.
    let Some(direct) = common::spawn_with(backend, |c| c.rate_limit_per_minute = 3).await else {
        return;
    };
    for client in ["203.0.113.1", "203.0.113.2"] {
        let response = direct
            .get("/livez")
            .header("x-forwarded-for", client)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = direct
        .get("/livez")
        .header("x-forwarded-for", "203.0.113.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}

/// Failed logins per account: the account is locked for the window even with the right
/// password, other accounts are not, and the window ends.
async fn failed_logins_lock_the_account_for_a_while(backend: Backend) {
    let Some(app) = common::spawn_with(backend, |c| {
        c.login_failure_limit = 3;
        c.login_failure_window_secs = 2;
    })
    .await
    else {
        return;
    };
    new_account(&app, "ada@example.com").await;
    for _ in 0..3 {
        assert_eq!(
            login(&app, "ada@example.com", "wrong password here")
                .await
                .status(),
            401
        );
    }
    let locked = login(&app, "ADA@example.com", PASSWORD).await;
    let retry = header(&locked, "retry-after");
    assert!(retry.parse::<u64>().unwrap() <= 2);
    assert_eq!(header(&locked, "ratelimit-policy"), "\"account\";q=3;w=2");
    assert_eq!(
        header(&locked, "ratelimit"),
        format!("\"account\";r=0;t={retry}")
    );
    assert_eq!(problem(locked, 429).await["type"], "/problems/rate-limited");
    assert_eq!(
        login(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await.status(),
        200,
        "others are not locked"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(login(&app, "ada@example.com", PASSWORD).await.status(), 200);
}

macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod configured {
            $(
                mod $name {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn sqlite() {
                        super::super::$name(super::super::Backend::Sqlite).await;
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn postgres() {
                        super::super::$name(super::super::Backend::Postgres).await;
                    }
                }
            )*
        }
    };
}

per_backend!(
    expired_tokens_are_refused,
    other_audiences_and_issuers_are_refused,
    rotating_the_key_keeps_old_tokens_valid,
    credential_routes_are_rate_limited,
    the_general_limit_is_per_client_and_resets,
    failed_logins_lock_the_account_for_a_while,
);

/// A configuration built in code is checked like one loaded from the environment.
#[tokio::test]
async fn the_server_refuses_placeholder_secrets_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.environment = keel::config::Environment::Production;
    config.bootstrap_admin_password = Some("changeme".into());
    let error = match keel::server::Server::build(config).await {
        Ok(_) => panic!("a production server started with a placeholder secret"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("KEEL_BOOTSTRAP_ADMIN_PASSWORD"), "{error}");
    assert!(!dir.path().join("keel.db").exists(), "nothing was created");
}
