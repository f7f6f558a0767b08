//! The shim's log: `tracing` events into containerd's `log` FIFO.
//!
//! containerd creates a FIFO named `log` in the bundle (the shim's working directory) and copies
//! whatever the serving shim writes there into its own log. The `start` and `delete` actions
//! run before or after that FIFO is read, so they log to stderr, which containerd shows when
//! they fail. Nothing here ever logs an Init-Data document: only its digest.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing::Level;

/// Sets up logging for the shim action being run (`start`, `delete`, or serving when empty).
pub fn init(action: &str, debug: bool) {
    let level = if debug { Level::DEBUG } else { Level::INFO };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    let serving = action.is_empty();
    if serving {
        // Opening a FIFO for writing blocks until containerd reads it, as it does from before
        // the shim starts.
        match OpenOptions::new().write(true).open("log") {
            Ok(fifo) => {
                let _ = builder.with_writer(Mutex::new(fifo)).try_init();
                return;
            }
            Err(e) => eprintln!("containerd-shim-coffer-v2: cannot open the log FIFO: {e}"),
        }
    }
    let _ = builder.with_writer(std::io::stderr).try_init();
}
