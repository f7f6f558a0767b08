//! A small QMP client: the handshake, commands, and the events QEMU sends in between.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::{Error, Result};

/// Longest QMP message accepted; QEMU's answers to the commands used here are far smaller.
const MAX_MESSAGE: usize = 1 << 20;

/// How long QEMU may take to answer one QMP command; it answers at once unless it is hung or
/// stopped.
pub const QMP_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A QMP connection in command mode.
#[derive(Debug)]
pub(crate) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Bytes of a message not yet complete; kept here so a cancelled read loses nothing.
    pending: Vec<u8>,
    /// Reason of the last `SHUTDOWN` event (`guest-shutdown`, `guest-reset`, `host-qmp-quit`, ...).
    pub shutdown_reason: Option<String>,
}

impl Qmp {
    /// Connects; fails at once when nothing listens yet.
    pub async fn connect(path: &Path) -> std::io::Result<Qmp> {
        let (read, write) = UnixStream::connect(path).await?.into_split();
        Ok(Qmp {
            reader: BufReader::new(read),
            writer: write,
            pending: Vec::new(),
            shutdown_reason: None,
        })
    }

    /// Reads the greeting and enters command mode.
    pub async fn handshake(&mut self) -> Result<()> {
        match self.read_message().await? {
            Some(greeting) if greeting.get("QMP").is_some() => {}
            Some(other) => return Err(Error::Qmp(format!("expected a QMP greeting, got {other}"))),
            None => {
                return Err(Error::Qmp(
                    "QEMU closed the QMP socket before greeting".into(),
                ))
            }
        }
        self.execute("qmp_capabilities", None).await.map(drop)
    }

    /// Runs `command` and returns its `return` value, or fails after [`QMP_COMMAND_TIMEOUT`]
    /// (a stopped or hung QEMU). Events that arrive first are recorded.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        tokio::time::timeout(
            QMP_COMMAND_TIMEOUT,
            self.execute_unbounded(command, arguments),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Qmp(format!(
                "QEMU did not answer {command} within {QMP_COMMAND_TIMEOUT:?}"
            )))
        })
    }

    async fn execute_unbounded(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Error::Qmp(format!("cannot send {command}: {e}")))?;
        loop {
            let Some(message) = self.read_message().await? else {
                return Err(Error::Qmp(format!(
                    "QEMU closed the QMP socket before answering {command}"
                )));
            };
            if let Some(ret) = message.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = message.get("error") {
                let class = err.get("class").and_then(Value::as_str).unwrap_or("Error");
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("");
                return Err(Error::Qmp(format!("{command} failed: {class}: {desc}")));
            }
        }
    }

    /// The next message that is not an event, or `None` at end of stream. Events are recorded.
    /// Cancel-safe: a partly read message stays in `pending`.
    pub async fn read_message(&mut self) -> Result<Option<Value>> {
        loop {
            let n = self
                .reader
                .read_until(b'\n', &mut self.pending)
                .await
                .map_err(|e| Error::Qmp(format!("cannot read from QEMU: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            if self.pending.len() > MAX_MESSAGE {
                return Err(Error::Qmp(format!(
                    "a QMP message exceeds {MAX_MESSAGE} bytes"
                )));
            }
            if self.pending.last() != Some(&b'\n') {
                continue;
            }
            let line = std::mem::take(&mut self.pending);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(text)
                .map_err(|e| Error::Qmp(format!("QEMU sent invalid JSON ({e}): {text}")))?;
            if message.get("event").is_some() {
                self.record_event(&message);
                continue;
            }
            return Ok(Some(message));
        }
    }

    fn record_event(&mut self, event: &Value) {
        tracing::debug!(%event, "QMP event");
        if event["event"] == "SHUTDOWN" {
            self.shutdown_reason = event["data"]["reason"].as_str().map(str::to_string);
        }
    }
}
