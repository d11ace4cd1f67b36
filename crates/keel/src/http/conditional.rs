//! Conditional requests (RFC 9110 §13): `If-Match` guards writes against lost updates,
//! `If-None-Match` lets a client revalidate a cached representation.

use axum::extract::FromRequestParts;
use http::{HeaderMap, HeaderValue, header, request::Parts};

use crate::error::{ApiError, FieldError, InputLocation};

/// A strong entity tag, as sent in `ETag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// The strong tag whose opaque part (the text between the quotes) is `opaque`.
    pub fn strong(opaque: impl std::fmt::Display) -> Self {
        Self(format!("\"{opaque}\""))
    }

    /// The entity tag of a stored revision.
    pub fn from_version(version: i64) -> Self {
        Self::strong(version)
    }

    /// The header value.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
    }

    fn opaque(&self) -> &str {
        self.0.trim_matches('"')
    }
}

/// What an `If-Match` header asks for.
#[derive(Debug, Clone, Default)]
pub enum IfMatch {
    /// No header: the write is unconditional.
    #[default]
    Absent,
    /// `*`: the resource must exist.
    Any,
    /// The current entity tag must be one of these (strong comparison).
    Tags(Vec<String>),
}

impl IfMatch {
    /// Whether a resource whose current tag is `current` satisfies the precondition.
    pub fn matches(&self, current: &ETag) -> bool {
        match self {
            Self::Absent | Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|t| t == current.opaque()),
        }
    }
}

impl IfMatch {
    /// Reads `If-Match`; a malformed list is a 422.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        match parse_list(headers, header::IF_MATCH, "If-Match")? {
            None => Ok(Self::Absent),
            Some(List::Any) => Ok(Self::Any),
            // Weak tags never match under the strong comparison If-Match requires.
            Some(List::Tags(tags)) => Ok(Self::Tags(
                tags.into_iter()
                    .filter(|t| !t.weak)
                    .map(|t| t.opaque)
                    .collect(),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

/// What an `If-None-Match` header asks for.
#[derive(Debug, Clone, Default)]
pub struct IfNoneMatch(Option<List>);

impl IfNoneMatch {
    /// Whether the client already has the representation tagged `current` (weak comparison),
    /// so a `GET` may answer 304.
    pub fn is_fresh(&self, current: &ETag) -> bool {
        match &self.0 {
            None => false,
            Some(List::Any) => true,
            Some(List::Tags(tags)) => tags.iter().any(|t| t.opaque == current.opaque()),
        }
    }
}

impl IfNoneMatch {
    /// Reads `If-None-Match`; a malformed list is a 422.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self(parse_list(
            headers,
            header::IF_NONE_MATCH,
            "If-None-Match",
        )?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

#[derive(Debug, Clone)]
enum List {
    Any,
    Tags(Vec<Tag>),
}

#[derive(Debug, Clone)]
struct Tag {
    weak: bool,
    opaque: String,
}

/// Parses `*` or a comma-separated list of entity tags across all instances of a header
/// (RFC 9110 §8.8.3: `W/` marks a weak tag; the opaque part is quoted and may hold commas).
fn parse_list(
    headers: &HeaderMap,
    name: header::HeaderName,
    display: &str,
) -> Result<Option<List>, ApiError> {
    let invalid = || {
        ApiError::invalid(FieldError::new(
            InputLocation::Header,
            format!("/{display}"),
            "invalid_entity_tag",
            "must be * or a list of entity tags such as \"3\" or W/\"3\"",
        ))
    };
    let mut tags = Vec::new();
    let mut seen = false;
    for value in headers.get_all(&name) {
        seen = true;
        let text = value.to_str().map_err(|_| invalid())?.trim();
        if text == "*" {
            return Ok(Some(List::Any));
        }
        let mut rest = text;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let (weak, quoted) = match rest.strip_prefix("W/") {
                Some(after) => (true, after),
                None => (false, rest),
            };
            let body = quoted.strip_prefix('"').ok_or_else(invalid)?;
            let end = body.find('"').ok_or_else(invalid)?;
            tags.push(Tag {
                weak,
                opaque: body[..end].to_owned(),
            });
            rest = &body[end + 1..];
            let next = rest.trim_start_matches([' ', '\t']);
            if !(next.is_empty() || next.starts_with(',')) {
                return Err(invalid());
            }
        }
    }
    if !seen {
        return Ok(None);
    }
    if tags.is_empty() {
        return Err(invalid());
    }
    Ok(Some(List::Tags(tags)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<List>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
        parse_list(&headers, header::IF_MATCH, "If-Match")
    }

    #[test]
    fn parses_lists_with_weak_tags_and_commas_inside_quotes() {
        let Ok(Some(List::Tags(tags))) = parse(r#" "1", W/"a,b" ,"" "#) else {
            panic!("should parse");
        };
        let found: Vec<(bool, &str)> = tags.iter().map(|t| (t.weak, t.opaque.as_str())).collect();
        assert_eq!(found, [(false, "1"), (true, "a,b"), (false, "")]);
        assert!(matches!(parse("*"), Ok(Some(List::Any))));
        assert!(parse("abc").is_err());
        assert!(parse(r#""1" "2""#).is_err());
        assert!(parse(r#""unterminated"#).is_err());
    }
}
