//! The ordered queue of frames to the host. Request handlers put their answers on it, containers
//! their output and exit events; the server's writer alone writes them to the port, in the order
//! they were queued.

use std::sync::mpsc;

use crate::protocol::GuestFrame;

/// A frame to send, and who waits until it is written.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame.
    pub frame: GuestFrame,
    /// Told once the frame is written (shutdown waits for its answer to leave).
    pub written: Option<mpsc::Sender<()>>,
}

impl From<GuestFrame> for Outgoing {
    fn from(frame: GuestFrame) -> Outgoing {
        Outgoing {
            frame,
            written: None,
        }
    }
}
