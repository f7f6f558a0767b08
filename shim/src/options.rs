//! The runtime options containerd hands the shim, and the config path inside them.
//!
//! A CRI runtime handler's `[...runtimes.NAME.options]` table reaches the shim as the `options`
//! `Any` of `CreateTaskRequest`. containerd's CRI plugin picks the message type from the
//! handler's `runtime_type`: runc's `containerd.runc.v1.Options` for `io.containerd.runc.*`,
//! and for every other runtime type (ours, `io.containerd.coffer.v2`) the generic
//! `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`, into which it
//! decodes `ConfigPath`. runc's message has no config path, so it means "use the default".

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, UnknownValueRef};

/// The type URL containerd gives the generic runtime options.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Field number of `config_path` in `runtimeoptions.v1.Options`.
const CONFIG_PATH_FIELD: u32 = 2;

/// Why the options could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// The bytes are not the protobuf message their type URL names.
    #[error("runtime options ({type_url}) are not valid protobuf: {reason}")]
    Malformed {
        /// The Any's type URL.
        type_url: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// `config_path` is not UTF-8 or not absolute.
    #[error("runtime option ConfigPath {0:?} must be an absolute path")]
    BadConfigPath(String),
}

/// Returns the `ConfigPath` the handler's options name, if any.
///
/// `None` means "no options" or options without a config path: the caller uses the default.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, OptionsError> {
    let Some(any) = options else {
        return Ok(None);
    };
    // containerd writes the bare message name; other clients prefix a host
    // ("type.googleapis.com/..."), so compare the last path segment.
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != RUNTIME_OPTIONS_TYPE {
        return Ok(None);
    }
    // Decoding into `Empty` keeps every field as an unknown field, which is all we need to read
    // one string without compiling containerd's proto file.
    let message = Empty::parse_from_bytes(&any.value).map_err(|e| OptionsError::Malformed {
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    })?;
    let Some(UnknownValueRef::LengthDelimited(bytes)) = message
        .special_fields
        .unknown_fields()
        .get(CONFIG_PATH_FIELD)
    else {
        return Ok(None);
    };
    let path = String::from_utf8(bytes.to_vec())
        .map_err(|e| OptionsError::BadConfigPath(String::from_utf8_lossy(e.as_bytes()).into()))?;
    if path.is_empty() {
        return Ok(None);
    }
    if !path.starts_with('/') {
        return Err(OptionsError::BadConfigPath(path));
    }
    Ok(Some(PathBuf::from(path)))
}

/// Encodes `runtimeoptions.v1.Options { config_path }` as containerd does; for tests and tools.
pub fn encode_config_path(path: &str) -> Any {
    let mut value = Vec::with_capacity(path.len() + 4);
    let mut write_field = |field: u32, text: &str| {
        // Field numbers here are small: the tag fits one byte.
        value.push(u8::try_from((field << 3) | 2).unwrap_or(u8::MAX));
        let mut len = text.len();
        // Varint length prefix.
        loop {
            let byte = u8::try_from(len & 0x7f).unwrap_or(0);
            len >>= 7;
            if len == 0 {
                value.push(byte);
                break;
            }
            value.push(byte | 0x80);
        }
        value.extend_from_slice(text.as_bytes());
    };
    write_field(CONFIG_PATH_FIELD, path);
    Any {
        type_url: RUNTIME_OPTIONS_TYPE.to_string(),
        value,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_options_means_default() {
        assert_eq!(config_path(None), Ok(None));
    }

    #[test]
    fn runtimeoptions_config_path_is_read() {
        let any = encode_config_path("/etc/coffer/coffer-qemu.toml");
        assert_eq!(
            config_path(Some(&any)),
            Ok(Some(PathBuf::from("/etc/coffer/coffer-qemu.toml")))
        );
    }

    #[test]
    fn type_url_with_host_prefix_is_accepted() {
        let mut any = encode_config_path("/x.toml");
        any.type_url = format!("type.googleapis.com/{RUNTIME_OPTIONS_TYPE}");
        assert_eq!(config_path(Some(&any)), Ok(Some(PathBuf::from("/x.toml"))));
    }

    #[test]
    fn bytes_as_containerd_marshals_them() {
        // type_url = "" (field 1 absent), config_path = "/c.toml": 0x12 len "/c.toml".
        let any = Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value: b"\x12\x07/c.toml".to_vec(),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&any)), Ok(Some(PathBuf::from("/c.toml"))));
        // With field 1 set as well.
        let any = Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value: b"\x0a\x03abc\x12\x07/c.toml".to_vec(),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&any)), Ok(Some(PathBuf::from("/c.toml"))));
    }

    #[test]
    fn runc_options_have_no_config_path() {
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: b"\x32\x04runc".to_vec(),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&any)), Ok(None));
    }

    #[test]
    fn relative_path_is_refused() {
        let any = encode_config_path("coffer.toml");
        assert_eq!(
            config_path(Some(&any)).unwrap_err().to_string(),
            "runtime option ConfigPath \"coffer.toml\" must be an absolute path"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let any = Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value: vec![0x12, 0x50, b'/'],
            ..Default::default()
        };
        assert!(matches!(
            config_path(Some(&any)),
            Err(OptionsError::Malformed { .. })
        ));
    }
}
