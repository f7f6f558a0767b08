//! A client of the streaming server containerd's CRI plugin runs for Exec and Attach: Kubernetes'
//! remote-command protocol over WebSocket (`v4.channel.k8s.io`), which that server accepts beside
//! SPDY. It is what `crictl exec -it` does after the CRI `Exec` call, for machines without crictl.
//!
//! Every WebSocket message is one binary frame whose first byte names the channel: 0 stdin,
//! 1 stdout, 2 stderr, 3 the final status (a Kubernetes `Status` object in JSON), 4 terminal
//! resizes (`{"Width":W,"Height":H}`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The subprotocol this client speaks.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// The longest the streaming server may take to accept the connection.
const CONNECT: Duration = Duration::from_secs(30);

/// Largest status message accepted: a `Status` object is a few hundred bytes.
const MAX_STATUS: usize = 64 * 1024;

/// What goes to the remote command.
#[derive(Debug)]
pub enum Input {
    /// Bytes for its stdin.
    Data(Vec<u8>),
    /// The terminal's new size, in columns and rows.
    Resize(u16, u16),
}

/// Why a streaming session failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The URL is not one this client can use.
    #[error("the streaming URL {url:?} is not usable: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached or refused the upgrade.
    #[error("connecting to the streaming server at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server broke the protocol.
    #[error("the streaming server broke the protocol: {0}")]
    Protocol(String),
    /// The command could not be run, as the runtime reported it.
    #[error("{0}")]
    Failed(String),
    /// Writing the command's output here failed.
    #[error("writing the command's output: {0}")]
    Output(#[source] std::io::Error),
}

/// Runs the session the streaming `url` stands for: `input` feeds the command's stdin (and
/// terminal size), its stdout and stderr are copied to `out` and `err`. Returns the command's
/// exit code once the server closes the session.
pub async fn run(
    url: &str,
    mut input: mpsc::Receiver<Input>,
    mut out: impl AsyncWrite + Unpin,
    mut err: impl AsyncWrite + Unpin,
) -> Result<i32, StreamError> {
    let ws_url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(StreamError::Url {
            url: url.to_owned(),
            reason: "not an http:// or https:// URL".into(),
        });
    };
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| StreamError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let connect = tokio_tungstenite::connect_async(request);
    let (ws, _) = tokio::time::timeout(CONNECT, connect)
        .await
        .map_err(|_| StreamError::Connect {
            url: url.to_owned(),
            reason: format!("no answer within {CONNECT:?}"),
        })?
        .map_err(|e| StreamError::Connect {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let (mut sink, mut stream) = ws.split();
    let mut status: Option<Vec<u8>> = None;
    let mut input_open = true;
    loop {
        tokio::select! {
            next = input.recv(), if input_open => {
                let frame = match next {
                    Some(Input::Data(data)) => channel_frame(STDIN, &data),
                    Some(Input::Resize(cols, rows)) => channel_frame(
                        RESIZE,
                        format!("{{\"Width\":{cols},\"Height\":{rows}}}").as_bytes(),
                    ),
                    // v4 has no way to close stdin alone: the command sees no EOF.
                    None => {
                        input_open = false;
                        continue;
                    }
                };
                // The server may already have closed: its status, read below, tells why.
                let _ = sink.send(Message::binary(frame)).await;
            }
            message = stream.next() => {
                let bytes = match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        // A session that ended with its status already read is complete.
                        if status.is_some() {
                            break;
                        }
                        return Err(StreamError::Protocol(e.to_string()));
                    }
                };
                let Some((&channel, data)) = bytes.split_first() else { continue };
                match channel {
                    STDOUT => write_all(&mut out, data).await?,
                    STDERR => write_all(&mut err, data).await?,
                    STATUS => {
                        let s = status.get_or_insert_with(Vec::new);
                        if s.len() + data.len() > MAX_STATUS {
                            return Err(StreamError::Protocol(format!(
                                "a status message over {MAX_STATUS} bytes"
                            )));
                        }
                        s.extend_from_slice(data);
                    }
                    other => {
                        return Err(StreamError::Protocol(format!(
                            "a message on channel {other}"
                        )))
                    }
                }
            }
        }
    }
    let _ = sink.close().await;
    match status {
        Some(s) if !s.is_empty() => exit_code(&s),
        _ => Err(StreamError::Protocol(
            "the session ended without the command's status".into(),
        )),
    }
}

fn channel_frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    frame
}

async fn write_all(w: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> Result<(), StreamError> {
    w.write_all(data).await.map_err(StreamError::Output)?;
    w.flush().await.map_err(StreamError::Output)
}

/// The exit code a `Status` object reports: 0 for `Success`, the `ExitCode` cause of a
/// `NonZeroExitCode` failure; any other failure is an error with the status's message.
pub fn exit_code(status: &[u8]) -> Result<i32, StreamError> {
    let v: serde_json::Value = serde_json::from_slice(status)
        .map_err(|e| StreamError::Protocol(format!("a status that is not JSON: {e}")))?;
    match v["status"].as_str() {
        Some("Success") => return Ok(0),
        Some("Failure") => {}
        other => {
            return Err(StreamError::Protocol(format!(
                "a status of {other:?}, neither Success nor Failure"
            )))
        }
    }
    if v["reason"] == "NonZeroExitCode" {
        let code = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(StreamError::Failed(
        v["message"]
            .as_str()
            .unwrap_or("the command failed without a message")
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_give_exit_codes() {
        assert_eq!(
            exit_code(br#"{"metadata":{},"status":"Success"}"#).unwrap(),
            0
        );
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        assert_eq!(exit_code(failed).unwrap(), 7);
        let other = br#"{"status":"Failure","message":"container not running"}"#;
        assert_eq!(
            exit_code(other).unwrap_err().to_string(),
            "container not running"
        );
        assert!(exit_code(b"{").is_err());
        assert!(exit_code(br#"{"status":"Pending"}"#).is_err());
    }
}
