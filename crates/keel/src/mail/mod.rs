//! Outgoing e-mail with lettre: SMTP when `SMTP_URL` is set, otherwise each message is
//! written as an `.eml` file under `<data_dir>/mail/`, so a developer sees what would
//! have been sent.
//!
//! Messages are rendered from askama templates (`templates/email/`), each with a
//! plain-text and an HTML body.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use askama::Template;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use secrecy::ExposeSecret;
use tracing::Instrument;

use crate::config::Config;

/// Time an SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where messages go.
#[derive(Clone)]
pub enum Transport {
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in this directory.
    Files(PathBuf),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smtp(_) => f.write_str("Transport::Smtp"),
            Self::Files(dir) => write!(f, "Transport::Files({})", dir.display()),
        }
    }
}

/// Sends keel's e-mail.
#[derive(Debug, Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

/// A message to send: recipient, subject and both bodies.
#[derive(Debug, Clone)]
pub struct Email {
    /// The recipient.
    pub to: Mailbox,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

impl Email {
    /// Renders `text` and `html` for `to`.
    pub fn render(
        to: Mailbox,
        subject: impl Into<String>,
        text: &impl Template,
        html: &impl Template,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            to,
            subject: subject.into(),
            text: text.render().context("cannot render the text body")?,
            html: html.render().context("cannot render the HTML body")?,
        })
    }
}

impl Mailer {
    /// The transport `config` chooses.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let from = config
            .mail_from
            .parse()
            .context("KEEL_MAIL_FROM is not an e-mail address")?;
        let transport = match &config.smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .context("SMTP_URL is not a valid SMTP URL")?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build(),
            ),
            None => Transport::Files(config.data_dir.join("mail")),
        };
        Ok(Self { transport, from })
    }

    /// Sends `email`. `key` names the message (its `Message-ID` and, for files, its file
    /// name): sending again with the same key replaces the file, and lets a mail server
    /// or client recognise a duplicate.
    pub async fn send(&self, key: &str, email: Email) -> anyhow::Result<()> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(email.to)
            .subject(email.subject)
            .message_id(Some(format!("<{key}@keel>")))
            .multipart(MultiPart::alternative_plain_html(email.text, email.html))
            .context("cannot build the message")?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message)
                    .instrument(tracing::info_span!(
                        "smtp",
                        "otel.kind" = "client",
                        "otel.name" = "smtp send",
                    ))
                    .await
                    .context("the SMTP server did not take the message")?;
            }
            Transport::Files(dir) => write_eml(dir, key, &message.formatted()).await?,
        }
        Ok(())
    }
}

/// Writes `<dir>/<key>.eml` whole or not at all (a temporary file renamed into place).
async fn write_eml(dir: &std::path::Path, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{key}.eml"));
    let partial = dir.join(format!(".{key}.eml.tmp"));
    tokio::fs::write(&partial, bytes)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    tokio::fs::rename(&partial, &path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(file = %path.display(), "e-mail written (no SMTP_URL set)");
    Ok(())
}
