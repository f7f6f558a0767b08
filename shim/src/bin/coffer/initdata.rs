//! `coffer initdata {new,encode,decode,check,digest}`: authoring Init-Data and computing the
//! reference values a key broker must expect.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use coffer_initdata::{annotation, Algorithm, InitData, Limits, TeeField};
use serde_json::json;

use crate::Failure;

/// The allow-all agent policy of the Init-Data example: every request permitted.
const ALLOW_ALL_POLICY: &str = include_str!("allow-all.rego");

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a ready Init-Data document for a key broker.
    New(NewArgs),
    /// Print the pod annotation value (gzip + base64) of a document, on one line.
    Encode(EncodeArgs),
    /// Print the exact document bytes an annotation value carries.
    Decode(DecodeArgs),
    /// Validate a document and print its version, algorithm, keys, digest and warnings.
    Check(Input),
    /// Print the digest and the value it puts into each TEE register.
    Digest(DigestArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// URL of the key broker (Trustee KBS) the attestation agent and data hub talk to.
    #[arg(long, value_name = "URL")]
    kbs_url: String,
    /// Digest algorithm: sha256, sha384 or sha512.
    #[arg(long, default_value = "sha256", value_parser = parse_algorithm)]
    algorithm: Algorithm,
    /// Agent policy (Rego) to embed; default: allow every agent request.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The document, or - for standard input.
    #[arg(value_name = "FILE|-")]
    file: String,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The annotation value, or - (or nothing) for standard input.
    #[arg(value_name = "VALUE|-")]
    value: Option<String>,
}

/// Where a document comes from: a file, standard input, or an annotation value.
#[derive(Debug, Args)]
pub struct Input {
    /// The document, or - for standard input.
    #[arg(value_name = "FILE|-", required_unless_present = "annotation")]
    file: Option<String>,
    /// Read the document from a pod annotation value instead (- reads the value from standard
    /// input: values can exceed the 128 KiB the kernel allows for one argument).
    #[arg(long, value_name = "VALUE|-", conflicts_with = "file")]
    annotation: Option<String>,
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    #[command(flatten)]
    input: Input,
    /// Print only the value for this register (none: the raw digest).
    #[arg(long, value_enum)]
    tee: Option<TeeArg>,
    /// Rendering: hex (what Trustee's init_data claim shows) or base64 (what QEMU takes).
    #[arg(long, value_enum, default_value_t = Format::Hex)]
    format: Format,
    /// Print one JSON object with every value in both renderings.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TeeArg {
    /// The raw digest.
    None,
    /// Intel TDX MRCONFIGID (48 bytes).
    Tdx,
    /// AMD SEV-SNP HOST_DATA (32 bytes).
    Snp,
    /// Arm CCA personalization value (64 bytes).
    Cca,
    /// Intel SGX CONFIGID (64 bytes).
    Sgx,
    /// IBM Secure Execution user data (256 bytes).
    Se,
    /// vTPM PCR 8 (sha256 bank).
    Vtpm,
}

impl TeeArg {
    fn field(self) -> Option<TeeField> {
        match self {
            TeeArg::None => None,
            TeeArg::Tdx => Some(TeeField::TdxMrConfigId),
            TeeArg::Snp => Some(TeeField::SnpHostData),
            TeeArg::Cca => Some(TeeField::CcaPersonalizationValue),
            TeeArg::Sgx => Some(TeeField::SgxConfigId),
            TeeArg::Se => Some(TeeField::SeUserData),
            TeeArg::Vtpm => Some(TeeField::VtpmPcr8),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Hex,
    Base64,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|e: coffer_initdata::Error| e.to_string())
}

pub fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::New(args) => new(args),
        Command::Encode(args) => {
            let doc = validated(read_source(&args.file)?, &args.file)?;
            println!("{}", annotation::encode(doc.as_bytes()));
            Ok(())
        }
        Command::Decode(args) => {
            let value = match args.value.as_deref() {
                None | Some("-") => read_text_stdin()?,
                Some(v) => v.to_owned(),
            };
            let bytes = annotation::decode_bytes(&value, &Limits::default())?;
            write_stdout(&bytes)
        }
        Command::Check(input) => check(&input),
        Command::Digest(args) => digest(&args),
    }
}

fn new(args: NewArgs) -> Result<(), Failure> {
    let policy = match &args.policy {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::Invalid(format!("cannot read policy {}: {e}", path.display())))?,
        None => ALLOW_ALL_POLICY.to_owned(),
    };
    let url = toml_string(&args.kbs_url);
    let aa = format!("[token_configs]\n[token_configs.kbs]\nurl = {url}\n");
    let cdh = format!("[kbc]\nname = \"cc_kbc\"\nurl = {url}\n");
    let mut doc = format!(
        "version = \"{}\"\nalgorithm = \"{}\"\n[data]\n",
        coffer_initdata::VERSION,
        args.algorithm
    );
    for (key, value) in [
        ("policy.rego", &policy),
        ("aa.toml", &aa),
        ("cdh.toml", &cdh),
    ] {
        let _ = writeln!(doc, "\"{key}\" = {}", toml_multiline(value));
    }
    // What we print must be what we meant: parse it back before anyone hashes it.
    let parsed = InitData::parse(doc.clone())?;
    if parsed.get("policy.rego") != Some(policy.as_str()) || parsed.get("aa.toml") != Some(&aa) {
        return Err(Failure::Invalid(
            "the generated document does not round-trip; check the policy file's content".into(),
        ));
    }
    write_stdout(doc.as_bytes())
}

/// A TOML basic string: quoted and escaped.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A readable multi-line literal (`'''`) when the text allows one, else an escaped string.
fn toml_multiline(s: &str) -> String {
    let literal_ok = !s.contains("'''")
        && !s.ends_with('\'')
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control());
    if literal_ok {
        format!("'''\n{s}'''")
    } else {
        toml_string(s)
    }
}

fn check(input: &Input) -> Result<(), Failure> {
    let (doc, name) = load(input)?;
    let digest = doc.digest();
    println!("source:    {name}");
    println!("version:   {}", doc.version());
    println!("algorithm: {}", doc.algorithm());
    println!("size:      {} bytes", doc.as_bytes().len());
    let keys: Vec<&str> = doc.data().keys().map(String::as_str).collect();
    println!(
        "keys:      {}",
        if keys.is_empty() {
            "(none)".to_owned()
        } else {
            keys.join(", ")
        }
    );
    println!("digest:    {}", digest.to_hex());
    for w in doc.warnings() {
        println!("warning:   {w}");
    }
    Ok(())
}

fn digest(args: &DigestArgs) -> Result<(), Failure> {
    let (doc, _) = load(&args.input)?;
    let digest = doc.digest();
    let render = |bytes: &[u8]| match args.format {
        Format::Hex => hex_of(bytes),
        Format::Base64 => base64_of(bytes),
    };
    let both = |bytes: &[u8]| json!({ "hex": hex_of(bytes), "base64": base64_of(bytes) });

    if let Some(tee) = args.tee {
        let (name, bytes) = match tee.field() {
            None => ("none", digest.as_bytes().to_vec()),
            Some(f) => (f.short_name(), digest.bind(f).as_bytes().to_vec()),
        };
        if args.json {
            let mut v = both(&bytes);
            v["tee"] = json!(name);
            v["algorithm"] = json!(doc.algorithm().as_str());
            println!("{v}");
        } else {
            println!("{}", render(&bytes));
        }
        return Ok(());
    }

    if args.json {
        let mut v =
            json!({ "algorithm": doc.algorithm().as_str(), "digest": both(digest.as_bytes()) });
        for f in TeeField::ALL {
            v[f.short_name()] = both(digest.bind(f).as_bytes());
        }
        println!("{v}");
        return Ok(());
    }
    let label = format!("digest ({})", doc.algorithm());
    println!("{label:<34} {}", render(digest.as_bytes()));
    for f in TeeField::ALL {
        let label = format!("{} [{}]", f.register_name(), f.short_name());
        println!("{label:<34} {}", render(digest.bind(f).as_bytes()));
    }
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Loads and validates the document an [`Input`] names; warnings go to stderr.
fn load(input: &Input) -> Result<(InitData, String), Failure> {
    load_document(input.annotation.as_deref(), input.file.as_deref())
}

/// Loads and validates a document from an annotation value or a file (`-`: standard input, for
/// either); warnings go to stderr. Returns the document and a name for messages.
pub(crate) fn load_document(
    annotation: Option<&str>,
    file: Option<&str>,
) -> Result<(InitData, String), Failure> {
    match (annotation, file) {
        (Some(value), _) => {
            let value = if value == "-" {
                read_text_stdin()?
            } else {
                value.to_owned()
            };
            let bytes = annotation::decode_bytes(&value, &Limits::default())
                .map_err(|e| Failure::Invalid(format!("annotation: {e}")))?;
            Ok((validated(bytes, "annotation")?, "annotation".to_owned()))
        }
        (None, Some(file)) => Ok((validated(read_source(file)?, file)?, file.to_owned())),
        (None, None) => Err(Failure::Usage(
            "give a FILE, - for standard input, or --annotation VALUE".into(),
        )),
    }
}

fn validated(bytes: Vec<u8>, name: &str) -> Result<InitData, Failure> {
    let doc = InitData::parse(bytes).map_err(|e| Failure::Invalid(format!("{name}: {e}")))?;
    for w in doc.warnings() {
        eprintln!("coffer: warning: {name}: {w}");
    }
    Ok(doc)
}

fn read_source(file: &str) -> Result<Vec<u8>, Failure> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::Invalid(format!("cannot read standard input: {e}")))?;
        return Ok(buf);
    }
    std::fs::read(file).map_err(|e| Failure::Invalid(format!("cannot read {file}: {e}")))
}

fn read_text_stdin() -> Result<String, Failure> {
    let bytes = read_source("-")?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::Invalid("the annotation value on standard input is not text".into()))
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Invalid(format!("cannot write to standard output: {e}")))
}
