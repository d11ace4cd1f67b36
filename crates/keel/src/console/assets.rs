//! The console's stylesheet and script, embedded in the binary and served under names that
//! carry a hash of their content, so browsers may keep them for a year: a new build that
//! changes them changes their names.

use std::sync::LazyLock;

use axum::{
    extract::Path,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

const CSS: &[u8] = include_bytes!("../../assets/console/console.css");
const JS: &[u8] = include_bytes!("../../assets/console/console.js");

struct Asset {
    url: String,
    file: String,
    body: Bytes,
    content_type: &'static str,
}

fn asset(stem: &str, extension: &str, body: &'static [u8], content_type: &'static str) -> Asset {
    let hash = hex::encode(&Sha256::digest(body)[..6]);
    let file = format!("{stem}.{hash}.{extension}");
    Asset {
        url: format!("/admin/assets/{file}"),
        file,
        body: Bytes::from_static(body),
        content_type,
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        asset("console", "css", CSS, "text/css; charset=utf-8"),
        asset("console", "js", JS, "text/javascript; charset=utf-8"),
    ]
});

/// The stylesheet's URL.
pub fn css_url() -> &'static str {
    &ASSETS[0].url
}

/// The script's URL.
pub fn js_url() -> &'static str {
    &ASSETS[1].url
}

/// `GET /admin/assets/{file}`: an asset by its hashed name, cacheable for a year.
pub async fn serve(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.file == file) {
        Some(asset) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            asset.body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        let hash = hex::encode(&Sha256::digest(CSS)[..6]);
        assert_eq!(css_url(), format!("/admin/assets/console.{hash}.css"));
        assert!(js_url().ends_with(".js"));
        assert_ne!(css_url(), js_url());
    }
}
