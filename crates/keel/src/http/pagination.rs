//! Keyset pagination over time-ordered ids: `limit`, an opaque `cursor`, and the
//! RFC 8288 `Link: <...>; rel="next"` header.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::HeaderValue;
use uuid::Uuid;

use crate::error::{FieldError, InputLocation};

use super::extract::QueryPairs;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 20;
/// Largest page size.
pub const MAX_LIMIT: u32 = 100;

const CURSOR_PREFIX: &[u8] = b"k1";

/// Position after which the next page starts: the last id of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub Uuid);

impl Cursor {
    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        let mut bytes = CURSOR_PREFIX.to_vec();
        bytes.extend_from_slice(self.0.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor produced by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let id = bytes.strip_prefix(CURSOR_PREFIX)?;
        Uuid::from_slice(id).ok().map(Self)
    }
}

/// `limit` and `cursor` from the query string.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Page size.
    pub limit: u32,
    /// Where to continue from; `None` for the first page.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Reads `limit` and `cursor`, adding a [`FieldError`] to `errors` for each bad one.
    pub fn from_query(query: &QueryPairs, errors: &mut Vec<FieldError>) -> Self {
        let limit = match query.get("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        InputLocation::Query,
                        "/limit",
                        "out_of_range",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                    DEFAULT_LIMIT
                }
            },
        };
        let after = match query.get("cursor") {
            None => None,
            Some(raw) => {
                let cursor = Cursor::decode(raw);
                if cursor.is_none() {
                    errors.push(FieldError::new(
                        InputLocation::Query,
                        "/cursor",
                        "invalid_cursor",
                        "must be a next_cursor value returned by this endpoint",
                    ));
                }
                cursor
            }
        };
        Self { limit, after }
    }
}

/// The `Link` header pointing at the next page of `path`, keeping the other parameters.
pub fn next_link(path: &str, params: &[(&str, &str)], cursor: &Cursor) -> Option<HeaderValue> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    query.append_pair("cursor", &cursor.encode());
    HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", query.finish())).ok()
}

/// The `next_cursor` and the `Link` header of a page whose last item is `last`, when `more`
/// items follow; `params` are the query parameters to keep besides `limit` and `cursor`.
pub fn next_page(
    path: &str,
    params: &[(&str, &str)],
    limit: u32,
    last: Option<Uuid>,
    more: bool,
) -> (Option<String>, http::HeaderMap) {
    let mut headers = http::HeaderMap::new();
    let Some(cursor) = last.filter(|_| more).map(Cursor) else {
        return (None, headers);
    };
    let limit = limit.to_string();
    let mut all = vec![("limit", limit.as_str())];
    all.extend_from_slice(params);
    if let Some(link) = next_link(path, &all, &cursor) {
        headers.insert(http::header::LINK, link);
    }
    (Some(cursor.encode()), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor(Uuid::now_v7());
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"k1short")), None);
    }
}
