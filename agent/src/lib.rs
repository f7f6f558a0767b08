//! coffer-agent, the in-guest agent, and the host-guest protocol.
