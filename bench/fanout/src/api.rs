//! One keep-alive HTTP/1.1 connection to keel for the writes, separate from the streams.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An authenticated connection to keel's API.
pub struct Api {
    sender: SendRequest<Full<Bytes>>,
    addr: String,
    authorization: String,
}

impl Api {
    /// Connects to `addr` (host:port); requests carry `token` as a bearer token.
    pub async fn connect(addr: &str, token: &str) -> Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            addr: addr.to_owned(),
            authorization: format!("Bearer {token}"),
        })
    }

    /// `POST path` with a JSON body: the status and the answer's body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("the API connection")?;
        let request = Request::post(path)
            .header(header::HOST, &self.addr)
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Creates a user (`POST /users`, which needs an admin); returns the new user's id.
    pub async fn create_user(&mut self, email: &str, name: &str) -> Result<String> {
        let (status, body) = self
            .post_json("/users", &serde_json::json!({"email": email, "name": name}))
            .await?;
        if status != StatusCode::CREATED {
            bail!(
                "POST /users answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let user: serde_json::Value = serde_json::from_slice(&body)?;
        user["id"]
            .as_str()
            .map(str::to_owned)
            .context("POST /users answered without an id")
    }
}
