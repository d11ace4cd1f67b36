//! Storage of users, on either backend.

use std::{collections::HashSet, sync::Arc, time::Duration};

use uuid::Uuid;

use crate::{
    auth::Role,
    db::{
        Db, DbError, FromRow, Param, Row, Tx,
        batch::{BatchLost, Batcher},
        now, values,
    },
    http::pagination::Cursor,
};

use super::{
    cache::{Lookup, UserCache},
    domain::{NewUser, User, UserChanges},
};

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another user holds this e-mail address (compared without case).
    #[error("e-mail address already taken")]
    EmailTaken,
    /// The stored revision is not the expected one.
    #[error("the user changed concurrently")]
    VersionMismatch,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The write was dropped before it reached the database (the server is stopping).
    #[error(transparent)]
    Lost(#[from] BatchLost),
}

/// A page of the users list, newest first.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Page size.
    pub limit: u32,
    /// Continue after this id.
    pub after: Option<Cursor>,
    /// Case-insensitive substring of the e-mail or the name.
    pub search: Option<String>,
}

const COLUMNS: &str =
    "id, email, name, role, email_verified_at, active, version, created_at, updated_at";

impl FromRow for User {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let role: String = row.get("role")?;
        Ok(Self {
            id: row.get("id")?,
            email: row.get("email")?,
            name: row.get("name")?,
            role: Role::parse(&role)
                .ok_or_else(|| DbError::Corrupt(format!("unknown role {role:?}")))?,
            email_verified_at: row.get("email_verified_at")?,
            active: row.get("active")?,
            version: row.get("version")?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
        })
    }
}

/// The first revision of the user `new` describes, with a fresh id.
fn fresh(new: &NewUser) -> User {
    let now = now();
    User {
        id: Uuid::now_v7(),
        email: new.email.as_str().to_owned(),
        name: new.name.as_str().to_owned(),
        role: new.role,
        email_verified_at: None,
        active: new.active,
        created_at: now,
        updated_at: now,
        version: 1,
    }
}

/// Maps a unique violation to [`StoreError::EmailTaken`]: the users table has no other
/// unique constraint a write can break (ids are fresh UUIDv7s).
fn map_unique(error: DbError) -> StoreError {
    if error.is_unique_violation() {
        StoreError::EmailTaken
    } else {
        StoreError::Database(error)
    }
}

/// Rows written by one multi-row INSERT at most.
const MAX_BATCH: usize = 256;

/// A user to insert, with the password hash that is never part of [`User`].
type Insert = (User, Option<String>);

/// A user with the stored password hash, for checking credentials.
struct WithHash(User, Option<String>);

impl FromRow for WithHash {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self(User::from_row(row)?, row.get("password_hash")?))
    }
}

/// Users' storage. Inserts that arrive together share one statement and one commit
/// (see [`crate::db::batch`]); everything else goes straight to the pool.
#[derive(Debug, Clone)]
pub struct UserStore {
    db: Db,
    inserts: Arc<Batcher<Insert, Result<(), StoreError>>>,
    cache: UserCache,
}

impl UserStore {
    /// Storage on `db`; starts the insert batcher on the current runtime.
    pub fn new(db: Db) -> Self {
        // SQLite takes one writer at a time; PostgreSQL overlaps a few commits, which
        // keeps its disk busy while the next batch fills.
        let flushers = match &db {
            Db::Sqlite(..) => 1,
            Db::Postgres { pg, .. } => pg.shared_connections(),
        };
        let writer = db.clone();
        let inserts = Batcher::spawn(MAX_BATCH, flushers, move |users| {
            let db = writer.clone();
            async move { insert_batch(&db, users).await }
        });
        Self {
            db,
            inserts: Arc::new(inserts),
            cache: UserCache::memory(Duration::from_secs(300)),
        }
    }

    /// The same storage reading single users through `cache`.
    pub fn with_cache(self, cache: UserCache) -> Self {
        Self { cache, ..self }
    }

    /// The cache of single users.
    pub fn cache(&self) -> &UserCache {
        &self.cache
    }

    /// User `id` from the cache, or from the database (then cached). Only for answering
    /// reads: a write starts from [`UserStore::get`], the stored row.
    pub async fn get_cached(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        match self.cache.get(id).await {
            Lookup::Found(user) => return Ok(Some(user)),
            Lookup::Deleted => return Ok(None),
            Lookup::Miss => {}
        }
        let user = self.get(id).await?;
        if let Some(user) = &user {
            self.cache.put(user).await;
        }
        Ok(user)
    }

    /// Brings the cache up to `user`, written in a transaction that has committed; every
    /// write does this before it is answered.
    pub async fn written(&self, user: &User) {
        self.cache.put(user).await;
    }

    /// Stores a new user with its password hash, answering once its row is committed.
    pub async fn insert(
        &self,
        new: &NewUser,
        password_hash: Option<String>,
    ) -> Result<User, StoreError> {
        let user = fresh(new);
        self.inserts.submit((user.clone(), password_hash)).await??;
        Ok(user)
    }

    /// Stores a new user inside `tx`, with whatever else the transaction writes.
    pub async fn insert_in(
        &self,
        tx: &mut Tx,
        new: &NewUser,
        password_hash: Option<String>,
    ) -> Result<User, StoreError> {
        let row = (fresh(new), password_hash);
        let role = row.0.role.as_str().to_owned();
        let sql = format!("{INSERT}{}", values(1, INSERT_COLUMNS));
        tx.execute(&sql, &insert_params(&row, &role))
            .await
            .map_err(map_unique)?;
        Ok(row.0)
    }

    /// Marks user `id` verified inside `tx` if its address is still `email` (without
    /// case); `None` when it is gone or its address changed.
    pub async fn mark_verified_in(
        &self,
        tx: &mut Tx,
        id: Uuid,
        email: &str,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $1), \
             updated_at = $1, version = version + 1 \
             WHERE id = $2 AND lower(email) = lower($3) RETURNING {COLUMNS}"
        );
        Ok(tx
            .fetch_optional(&sql, &[&now(), &id, &email.to_owned()])
            .await?)
    }

    /// Replaces the password hash of user `id` inside `tx`, whatever its revision; `None`
    /// when the user is gone.
    pub async fn set_password_in(
        &self,
        tx: &mut Tx,
        id: Uuid,
        hash: String,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "UPDATE users SET password_hash = $1, updated_at = $2, version = version + 1 \
             WHERE id = $3 RETURNING {COLUMNS}"
        );
        Ok(tx.fetch_optional(&sql, &[&hash, &now(), &id]).await?)
    }

    /// The user with this e-mail address (compared without case, the domain in either its
    /// Unicode or its ASCII form) and its password hash.
    pub async fn credentials(
        &self,
        email: &str,
    ) -> Result<Option<(User, Option<String>)>, StoreError> {
        // Stored addresses never hold control characters (and PostgreSQL refuses NUL in a
        // string), so no account has such an address.
        if email.chars().any(char::is_control) {
            return Ok(None);
        }
        // Addresses are stored with their domain in ASCII; one stored before that rule,
        // with a Unicode domain, is found by the address as given.
        let sql = format!(
            "SELECT {COLUMNS}, password_hash FROM users \
             WHERE lower(email) = lower($1) OR lower(email) = lower($2) \
             ORDER BY lower(email) = lower($1) DESC LIMIT 1"
        );
        let canonical = super::domain::canonical_email(email);
        let found: Option<WithHash> = self
            .db
            .fetch_optional(&sql, &[&canonical, &email.to_owned()])
            .await?;
        Ok(found.map(|WithHash(user, hash)| (user, hash)))
    }

    /// The password hash of user `id`; `None` when the user is gone or has no password.
    pub async fn password_hash(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let found: Option<(Option<String>,)> = self
            .db
            .fetch_optional("SELECT password_hash FROM users WHERE id = $1", &[&id])
            .await?;
        Ok(found.and_then(|(hash,)| hash))
    }

    /// Replaces the password hash of revision `current` of the user.
    pub async fn set_password(&self, current: &User, hash: String) -> Result<User, StoreError> {
        let updated = User {
            updated_at: now(),
            version: current.version + 1,
            ..current.clone()
        };
        let changed = self
            .db
            .execute(
                "UPDATE users SET password_hash = $1, updated_at = $2, version = $3 \
                 WHERE id = $4 AND version = $5",
                &[
                    &hash,
                    &updated.updated_at,
                    &updated.version,
                    &current.id,
                    &current.version,
                ],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::VersionMismatch);
        }
        self.cache.put(&updated).await;
        Ok(updated)
    }

    /// How many users there are, active or not.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let (count,): (i64,) = self.db.fetch_one("SELECT COUNT(*) FROM users", &[]).await?;
        Ok(count)
    }

    /// The user with `id`, if any.
    pub async fn get(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
        Ok(self.db.fetch_optional(&sql, &[&id]).await?)
    }

    /// One page of users, newest first; fetches one extra row to tell whether more follow.
    pub async fn list(&self, query: &ListQuery) -> Result<(Vec<User>, bool), StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM users WHERE 1 = 1");
        let mut next = 1;
        if query.after.is_some() {
            sql.push_str(&format!(" AND id < ${next}"));
            next += 1;
        }
        if query.search.is_some() {
            sql.push_str(&format!(
                " AND (lower(email) LIKE ${next} ESCAPE '\\' OR lower(name) LIKE ${next} ESCAPE '\\')"
            ));
            next += 1;
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${next}"));
        let pattern = query.search.as_deref().map(like_pattern);
        let fetch = i64::from(query.limit) + 1;
        let after = query.after.map(|cursor| cursor.0);
        let mut params: Vec<&dyn Param> = Vec::with_capacity(3);
        if let Some(after) = &after {
            params.push(after);
        }
        if let Some(pattern) = &pattern {
            params.push(pattern);
        }
        params.push(&fetch);
        let mut rows: Vec<User> = self.db.fetch_all(&sql, &params).await?;
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        Ok((rows, more))
    }

    /// Applies `changes` to revision `expected` of the user; fails with
    /// [`StoreError::VersionMismatch`] when the stored revision differs (or the user is gone).
    pub async fn update(&self, current: &User, changes: &UserChanges) -> Result<User, StoreError> {
        let updated = User {
            email: changes
                .email
                .as_ref()
                .map_or_else(|| current.email.clone(), |e| e.as_str().to_owned()),
            name: changes
                .name
                .as_ref()
                .map_or_else(|| current.name.clone(), |n| n.as_str().to_owned()),
            role: changes.role.unwrap_or(current.role),
            active: changes.active.unwrap_or(current.active),
            updated_at: now(),
            version: current.version + 1,
            ..current.clone()
        };
        // A new address has not been verified yet.
        let updated = User {
            email_verified_at: current
                .email_verified_at
                .filter(|_| updated.email.eq_ignore_ascii_case(&current.email)),
            ..updated
        };
        let result = self
            .db
            .execute(
                "UPDATE users SET email = $1, name = $2, role = $3, updated_at = $4, \
                 version = $5, email_verified_at = $6, active = $7 WHERE id = $8 AND version = $9",
                &[
                    &updated.email,
                    &updated.name,
                    &updated.role.as_str().to_owned(),
                    &updated.updated_at,
                    &updated.version,
                    &updated.email_verified_at,
                    &updated.active,
                    &current.id,
                    &current.version,
                ],
            )
            .await
            .map_err(map_unique)?;
        if result == 0 {
            return Err(StoreError::VersionMismatch);
        }
        self.cache.put(&updated).await;
        Ok(updated)
    }

    /// Deletes revision `version` of user `id`; [`StoreError::VersionMismatch`] when the
    /// stored revision differs (or the user is gone).
    pub async fn delete(&self, id: Uuid, version: i64) -> Result<(), StoreError> {
        let deleted = self
            .db
            .execute(
                "DELETE FROM users WHERE id = $1 AND version = $2",
                &[&id, &version],
            )
            .await?;
        if deleted == 0 {
            return Err(StoreError::VersionMismatch);
        }
        self.cache.delete(id).await;
        Ok(())
    }
}

/// `%needle%` for LIKE, lower-cased, with `%`, `_` and `\` taken literally.
fn like_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Writes `users` with one multi-row INSERT; a row whose e-mail is taken (by a stored
/// user or an earlier row of the batch) is skipped and reported as [`StoreError::EmailTaken`].
/// If the statement fails as a whole, each row is retried alone so that it gets its own answer.
async fn insert_batch(db: &Db, users: Vec<Insert>) -> Vec<Result<(), StoreError>> {
    let sql = format!(
        "{INSERT}{} ON CONFLICT DO NOTHING RETURNING id",
        values(users.len(), INSERT_COLUMNS)
    );
    let roles: Vec<String> = users
        .iter()
        .map(|(user, _)| user.role.as_str().to_owned())
        .collect();
    let params: Vec<&dyn Param> = users
        .iter()
        .zip(&roles)
        .flat_map(|(row, role)| insert_params(row, role))
        .collect();
    let inserted = db
        .fetch_all::<(Uuid,)>(&sql, &params)
        .await
        .map(|ids| ids.into_iter().map(|(id,)| id).collect::<HashSet<_>>());
    match inserted {
        Ok(ids) => users
            .iter()
            .map(|(user, _)| {
                if ids.contains(&user.id) {
                    Ok(())
                } else {
                    Err(StoreError::EmailTaken)
                }
            })
            .collect(),
        Err(error) if users.len() > 1 => {
            tracing::warn!(%error, rows = users.len(), "batched insert failed; retrying row by row");
            let mut results = Vec::with_capacity(users.len());
            for row in &users {
                results.push(insert_one(db, row).await);
            }
            results
        }
        Err(error) => vec![Err(map_unique(error))],
    }
}

/// The columns of an INSERT of users, in the order of [`insert_params`].
const INSERT: &str = "INSERT INTO users \
    (id, email, name, role, password_hash, active, version, created_at, updated_at) VALUES ";
const INSERT_COLUMNS: usize = 9;

/// The values of a row for [`INSERT`]; `role` is the row's role as stored.
fn insert_params<'a>(
    (user, hash): &'a Insert,
    role: &'a String,
) -> [&'a dyn Param; INSERT_COLUMNS] {
    [
        &user.id,
        &user.email,
        &user.name,
        role,
        hash,
        &user.active,
        &user.version,
        &user.created_at,
        &user.updated_at,
    ]
}

/// Writes one user with a plain INSERT.
async fn insert_one(db: &Db, row: &Insert) -> Result<(), StoreError> {
    let sql = format!("{INSERT}{}", values(1, INSERT_COLUMNS));
    let role = row.0.role.as_str().to_owned();
    db.execute(&sql, &insert_params(row, &role))
        .await
        .map(drop)
        .map_err(map_unique)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn user(email: &str) -> Insert {
        let now = now();
        let user = User {
            id: Uuid::now_v7(),
            email: email.to_owned(),
            name: "Test User".to_owned(),
            role: Role::User,
            email_verified_at: None,
            active: true,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        (user, None)
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_row_by_row() {
        let config = Config {
            database_url: Some("sqlite::memory:".into()),
            database_max_connections: 1,
            ..Config::default()
        };
        let db = Db::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        // The table's CHECK refuses the long address, failing the whole statement; the
        // other rows must still be written and get their own answers.
        let long = format!("{}@example.com", "x".repeat(250));
        let batch = vec![user("a@example.com"), user(&long), user("A@example.com")];
        let results = insert_batch(&db, batch).await;
        assert!(matches!(results[0], Ok(())));
        assert!(matches!(results[1], Err(StoreError::Database(_))));
        assert!(matches!(results[2], Err(StoreError::EmailTaken)));
        let store = UserStore::new(db);
        let page = ListQuery {
            limit: 10,
            after: None,
            search: None,
        };
        let (rows, _) = store.list(&page).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].email, "a@example.com");
    }

    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(like_pattern("A_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
