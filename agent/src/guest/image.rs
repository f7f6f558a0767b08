//! Images the guest pulls itself ("guest pull"): the host's copy of an image is never used. For a
//! container's image reference the guest fetches the manifest from the registry over the pod
//! network (checked against the digest the reference pins, if it pins one), streams every layer
//! through a sha256 of its own and the decompressor into a private directory in guest memory,
//! and gives each container an overlay: the image as the read-only lower layer, a private upper
//! layer for what the container writes. An image is pulled once per guest.
//!
//! Where and how to pull comes from the Init-Data only ([`super::registry`]). The registry
//! protocol is `oci-client`'s, which is async: a pull runs a current-thread tokio runtime on the
//! request's own thread, and the agent stays free of a runtime otherwise.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    OciDescriptor, OciImageIndex, OciImageManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use super::layer::{self, LayerError};
use super::registry::{PullConfig, RegistryConfigError};
use crate::protocol::{ErrorKind, GuestError, INITDATA_DIR, PULL_DEADLINE};

/// Where pulled images and the containers' private layers live (the guest's tmpfs).
pub const IMAGES_DIR: &str = "/run/coffer/images";
/// Where each container's overlay root and its private upper layer live.
pub const ROOTS_DIR: &str = "/run/coffer/roots";

/// Largest manifest or index accepted, in bytes (containerd's own limit).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Most layers an image may have (the overlay's lowerdir is one directory anyway).
const MAX_LAYERS: usize = 128;
/// Memory left to the guest after an image is unpacked.
const MEMORY_MARGIN: u64 = 64 * 1024 * 1024;
/// An unpacked layer is estimated at this many times its compressed size before the pull.
const INFLATION: u64 = 3;
/// Deadline of a connection to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of each read from the registry.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks in flight between the download and the unpacking thread.
const CHUNKS_IN_FLIGHT: usize = 16;

/// Why an image could not be pulled; each message names the image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("image reference {reference:?} is not valid: {reason}")]
    Reference {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The Init-Data's pull configuration is unusable.
    #[error(
        "cannot pull image {reference}: the Init-Data's image configuration is unusable: {source}"
    )]
    Config {
        /// The reference.
        reference: String,
        /// Why.
        source: RegistryConfigError,
    },
    /// The registry configuration blocks this registry.
    #[error("cannot pull image {reference}: registry {registry} is blocked by the Init-Data's registry configuration")]
    Blocked {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
    },
    /// The registry could not be reached or did not answer in time.
    #[error("cannot pull image {reference}: registry {registry} is unreachable from the guest: {reason}; check the pod network and the registry configuration in the Init-Data (insecure = true for a plain HTTP registry)")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The transport's error.
        reason: String,
    },
    /// The registry does not have the image.
    #[error("image {reference} not found in registry {registry}: {reason}")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What the registry said.
        reason: String,
    },
    /// The registry answered with an error.
    #[error("cannot pull image {reference} from registry {registry}: {reason}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What the registry said.
        reason: String,
    },
    /// The manifest is not usable (too large, not JSON, no linux/amd64 entry, ...).
    #[error("image {reference}: {reason}")]
    Manifest {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A manifest or layer does not have the digest it must have.
    #[error("image {reference}: {what} {expected} does not match its digest: the registry sent content with digest {found}; the image was not used")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// `layer` or `manifest`.
        what: &'static str,
        /// The digest it must have.
        expected: String,
        /// The digest of what arrived.
        found: String,
    },
    /// The image does not fit in the guest's memory.
    #[error("image {reference} is too large for this guest: {needed} MiB estimated ({layers} MiB of compressed layers) but {available} MiB of memory available (keeping {margin} MiB free); give the pod more memory")]
    TooLarge {
        /// The reference.
        reference: String,
        /// Compressed layer size, MiB.
        layers: u64,
        /// Estimated need, MiB.
        needed: u64,
        /// MemAvailable, MiB.
        available: u64,
        /// The margin, MiB.
        margin: u64,
    },
    /// A layer could not be unpacked.
    #[error("image {reference}: layer {digest}: {source}")]
    Layer {
        /// The reference.
        reference: String,
        /// The layer's digest.
        digest: String,
        /// Why.
        source: LayerError,
    },
    /// The pull took longer than its deadline.
    #[error("pulling image {reference} took longer than {secs} s")]
    Deadline {
        /// The reference.
        reference: String,
        /// The deadline.
        secs: u64,
    },
    /// Something in the guest failed.
    #[error("cannot pull image {reference}: {what}: {reason}")]
    Guest {
        /// The reference.
        reference: String,
        /// What was being done.
        what: String,
        /// Why.
        reason: String,
    },
}

impl PullError {
    /// The status the host shows for it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PullError::Reference { .. } => ErrorKind::InvalidArgument,
            PullError::NotFound { .. } => ErrorKind::NotFound,
            PullError::Blocked { .. } => ErrorKind::PermissionDenied,
            PullError::Deadline { .. } => ErrorKind::DeadlineExceeded,
            PullError::Guest { .. } => ErrorKind::Internal,
            _ => ErrorKind::FailedPrecondition,
        }
    }
}

impl From<PullError> for GuestError {
    fn from(e: PullError) -> GuestError {
        GuestError::new(e.kind(), e.to_string())
    }
}

/// An image unpacked in the guest.
#[derive(Debug)]
pub struct Image {
    /// The unpacked layers, the overlay's lower directory.
    pub dir: PathBuf,
    /// The manifest's digest.
    pub digest: String,
}

/// One reference's image once pulled; its lock makes a second container wait for the pull.
type Slot = Arc<Mutex<Option<Arc<Image>>>>;

/// The images of this guest, by reference; each pulled once.
#[derive(Debug, Default)]
pub struct Images {
    /// One slot per reference.
    pulls: Mutex<HashMap<String, Slot>>,
}

impl Images {
    /// The image `reference`, pulled now unless an earlier container pulled it.
    pub fn get(&self, reference: &str) -> Result<Arc<Image>, PullError> {
        let slot = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            pulls.entry(reference.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(image) = slot.as_ref() {
            return Ok(image.clone());
        }
        let config =
            PullConfig::load(Path::new(INITDATA_DIR)).map_err(|source| PullError::Config {
                reference: reference.to_string(),
                source,
            })?;
        let started = std::time::Instant::now();
        // A panic in the registry client must answer the host, not leave it waiting.
        let pulled = std::panic::catch_unwind(|| pull(reference, &config, Path::new(IMAGES_DIR)))
            .unwrap_or_else(|_| {
                Err(PullError::Guest {
                    reference: reference.to_string(),
                    what: "the registry client".into(),
                    reason: "it panicked (see the guest console)".into(),
                })
            });
        let image = Arc::new(pulled?);
        super::boot::log(&format!(
            "pulled image {reference} ({}) in {} ms",
            image.digest,
            started.elapsed().as_millis()
        ));
        *slot = Some(image.clone());
        Ok(image)
    }
}

/// A container's root: an overlay of its image with a private writable layer.
#[derive(Debug)]
pub struct ContainerRoot {
    /// The merged directory the container's process makes its root.
    pub rootfs: PathBuf,
    dir: PathBuf,
}

impl ContainerRoot {
    /// Mounts the overlay for container `id` over `image`.
    pub fn mount(id: &str, image: &Image) -> Result<ContainerRoot, String> {
        let dir = Path::new(ROOTS_DIR).join(id);
        let rootfs = dir.join("rootfs");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.dir.display(),
            upper.display(),
            work.display()
        );
        if let Err(e) = mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(data.as_str()),
        ) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "mounting the overlay for container {id} on {}: {e} (the guest kernel needs the overlay module)",
                rootfs.display()
            ));
        }
        Ok(ContainerRoot { rootfs, dir })
    }
}

impl Drop for ContainerRoot {
    fn drop(&mut self) {
        // Detached: a process of the container may still hold it while it goes away.
        let _ = umount2(&self.rootfs, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pulls `reference` into a new directory under `store`.
pub fn pull(reference: &str, config: &PullConfig, store: &Path) -> Result<Image, PullError> {
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| PullError::Reference {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?;
    let registry = parsed.resolve_registry().to_string();
    let ctx = Ctx {
        reference: reference.to_string(),
        registry: registry.clone(),
    };
    let entry = config.entry_for(parsed.registry(), parsed.repository());
    if entry.is_some_and(|e| e.blocked) {
        return Err(PullError::Blocked {
            reference: ctx.reference,
            registry,
        });
    }
    let protocol = if entry.is_some_and(|e| e.insecure) {
        ClientProtocol::HttpsExcept(vec![parsed.registry().to_string(), registry.clone()])
    } else {
        ClientProtocol::Https
    };
    // Trusted roots: the webpki roots and the Init-Data's extra roots, nothing from the guest's
    // (empty) filesystem.
    let mut roots: Vec<Certificate> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate {
            encoding: CertificateEncoding::Der,
            data: c.as_ref().to_vec(),
        })
        .collect();
    roots.extend(
        config
            .extra_root_certificates
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            }),
    );
    // rustls needs a process-wide provider; a second install is refused, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The registry client also builds a default HTTP client, which panics without a system CA
    // bundle; the guest has none, so it gets the webpki roots (the pull itself uses `roots`).
    ensure_ca_bundle().map_err(|e| PullError::Guest {
        reference: reference.to_string(),
        what: format!("writing {CA_BUNDLE}"),
        reason: e.to_string(),
    })?;
    let client_config = ClientConfig {
        protocol,
        tls_certs_only: roots,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ctx.guest("starting the pull's runtime", e))?;
    std::fs::create_dir_all(store)
        .map_err(|e| ctx.guest(format!("mkdir {}", store.display()), e))?;
    let staging = tempdir_in(store).map_err(|e| ctx.guest("creating the image directory", e))?;
    let result = runtime.block_on(async {
        match tokio::time::timeout(
            PULL_DEADLINE,
            pull_into(&ctx, &parsed, client_config, &staging),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(PullError::Deadline {
                reference: ctx.reference.clone(),
                secs: PULL_DEADLINE.as_secs(),
            }),
        }
    });
    match result {
        Ok(digest) => {
            let dir = store.join(digest.replace(':', "-"));
            if dir.exists() {
                // Another reference to the same image: keep the first copy.
                let _ = std::fs::remove_dir_all(&staging);
            } else {
                std::fs::rename(&staging, &dir)
                    .map_err(|e| ctx.guest("moving the unpacked image in place", e))?;
            }
            Ok(Image { dir, digest })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// The reference and registry every error names.
struct Ctx {
    reference: String,
    registry: String,
}

impl Ctx {
    fn guest(&self, what: impl Into<String>, e: impl std::fmt::Display) -> PullError {
        PullError::Guest {
            reference: self.reference.clone(),
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// Sorts oci-client's error into unreachable, not found and other registry errors.
    fn registry_error(&self, e: OciDistributionError) -> PullError {
        let reference = self.reference.clone();
        let registry = self.registry.clone();
        match e {
            OciDistributionError::RequestError(r) => PullError::Unreachable {
                reference,
                registry,
                reason: error_chain(&r),
            },
            OciDistributionError::ImageManifestNotFoundError(reason) => PullError::NotFound {
                reference,
                registry,
                reason,
            },
            OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound {
                reference,
                registry,
                reason: "the registry answered 404".into(),
            },
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|e| format!("{:?}", e.code).contains("Unknown")) =>
            {
                PullError::NotFound {
                    reference,
                    registry,
                    reason: e.to_string(),
                }
            }
            other => PullError::Registry {
                reference,
                registry,
                reason: other.to_string(),
            },
        }
    }
}

/// The error and its causes on one line (reqwest's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fetches and verifies the manifest, then streams and unpacks every layer into `dir`.
/// Returns the manifest's digest.
async fn pull_into(
    ctx: &Ctx,
    reference: &Reference,
    config: ClientConfig,
    dir: &Path,
) -> Result<String, PullError> {
    // Not `Client::new`, which falls back to a default configuration (other roots, no
    // timeouts) when this one does not build.
    let client = Client::try_from(config).map_err(|e| PullError::Config {
        reference: ctx.reference.clone(),
        source: RegistryConfigError::Parse {
            path: "cdh.toml [image]".into(),
            reason: format!(
                "the registry client does not accept it (an extra root certificate?): {e}"
            ),
        },
    })?;
    let auth = RegistryAuth::Anonymous;
    let accepted = [
        OCI_IMAGE_MEDIA_TYPE,
        IMAGE_MANIFEST_MEDIA_TYPE,
        OCI_IMAGE_INDEX_MEDIA_TYPE,
        IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ];
    let (raw, _) = client
        .pull_manifest_raw(reference, &auth, &accepted)
        .await
        .map_err(|e| ctx.registry_error(e))?;
    let mut digest = check_manifest(ctx, &raw, reference.digest())?;
    let mut manifest_bytes = raw;
    // An index: the linux/amd64 manifest it names, fetched by digest.
    let value: serde_json::Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| ctx.manifest(format!("the manifest is not JSON: {e}")))?;
    let media = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let by_digest;
    let mut image_ref = reference;
    if media == OCI_IMAGE_INDEX_MEDIA_TYPE
        || media == IMAGE_MANIFEST_LIST_MEDIA_TYPE
        || value.get("manifests").is_some()
    {
        let index: OciImageIndex = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ctx.manifest(format!("the image index is not valid: {e}")))?;
        let chosen = oci_client::client::linux_amd64_resolver(&index.manifests)
            .ok_or_else(|| ctx.manifest("the image index has no linux/amd64 image".into()))?;
        by_digest = reference.clone_with_digest(chosen.clone());
        image_ref = &by_digest;
        let (raw, _) = client
            .pull_manifest_raw(image_ref, &auth, &accepted)
            .await
            .map_err(|e| ctx.registry_error(e))?;
        digest = check_manifest(ctx, &raw, Some(&chosen))?;
        manifest_bytes = raw;
    }
    let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| ctx.manifest(format!("the image manifest is not valid: {e}")))?;
    if manifest.layers.is_empty() || manifest.layers.len() > MAX_LAYERS {
        return Err(ctx.manifest(format!(
            "the image has {} layers; between 1 and {MAX_LAYERS} are supported",
            manifest.layers.len()
        )));
    }
    let compressed = manifest.layers.iter().try_fold(0u64, |sum, l| {
        u64::try_from(l.size).ok().map(|s| sum.saturating_add(s))
    });
    let compressed =
        compressed.ok_or_else(|| ctx.manifest("a layer has a negative size".into()))?;
    let available = mem_available().map_err(|e| ctx.guest("reading /proc/meminfo", e))?;
    let budget = available.saturating_sub(MEMORY_MARGIN);
    let needed = compressed.saturating_mul(INFLATION);
    if needed > budget {
        return Err(PullError::TooLarge {
            reference: ctx.reference.clone(),
            layers: compressed >> 20,
            needed: needed >> 20,
            available: available >> 20,
            margin: MEMORY_MARGIN >> 20,
        });
    }
    let mut left = budget;
    for l in &manifest.layers {
        let written = pull_layer(ctx, &client, image_ref, l, dir, left).await?;
        left = left.saturating_sub(written);
    }
    Ok(digest)
}

impl Ctx {
    fn manifest(&self, reason: String) -> PullError {
        PullError::Manifest {
            reference: self.reference.clone(),
            reason,
        }
    }
}

/// Bounds a manifest and checks it against the digest it must have.
fn check_manifest(ctx: &Ctx, raw: &[u8], pinned: Option<&str>) -> Result<String, PullError> {
    if raw.len() > MAX_MANIFEST_BYTES {
        return Err(ctx.manifest(format!(
            "the manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
            raw.len()
        )));
    }
    let found = sha256_digest(raw);
    if let Some(expected) = pinned {
        if expected != found {
            return Err(PullError::DigestMismatch {
                reference: ctx.reference.clone(),
                what: "manifest",
                expected: expected.to_string(),
                found,
            });
        }
    }
    Ok(found)
}

/// How a layer is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    fn of(media_type: &str) -> Result<Compression, String> {
        if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
            Ok(Compression::Gzip)
        } else if media_type.ends_with("tar+zstd") {
            Ok(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(format!("layer media type {media_type} is not supported"))
        }
    }

    /// The decompressing reader. Built on the unpacking thread: a gzip decoder reads its header
    /// at once, which blocks until the download sends the first chunk.
    fn reader(self, input: ChunkReader) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
            Compression::None => Box::new(input),
        })
    }
}

/// Streams one layer: the bytes go through sha256 here and, over a bounded channel, to a thread
/// that decompresses and unpacks them. The layer counts only if its digest matches.
async fn pull_layer(
    ctx: &Ctx,
    client: &Client,
    reference: &Reference,
    layer_desc: &OciDescriptor,
    dir: &Path,
    budget: u64,
) -> Result<u64, PullError> {
    let expected = layer_desc.digest.clone();
    let Some(expected_hex) = expected.strip_prefix("sha256:") else {
        return Err(ctx.manifest(format!(
            "layer {expected} is not a sha256 digest; only sha256 is supported"
        )));
    };
    let expected_size = u64::try_from(layer_desc.size).unwrap_or(0);
    let (tx, rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let reader = ChunkReader {
        rx,
        chunk: Vec::new(),
        at: 0,
    };
    let compression = Compression::of(&layer_desc.media_type).map_err(|e| ctx.manifest(e))?;
    let root = dir.to_path_buf();
    let unpacker = std::thread::spawn(move || {
        let mut tar = compression.reader(reader).map_err(LayerError::Read)?;
        let r = layer::unpack(&mut tar, &root, budget);
        // Drain what is left so the sender never blocks on a reader that gave up.
        let _ = std::io::copy(&mut tar, &mut std::io::sink());
        r
    });
    let streamed = stream_layer(ctx, client, reference, layer_desc, &tx, expected_size).await;
    drop(tx);
    let unpacked = unpacker.join();
    let (hash, received) = streamed?;
    let found = format!("sha256:{}", hex::encode(hash));
    if found != format!("sha256:{expected_hex}") {
        return Err(PullError::DigestMismatch {
            reference: ctx.reference.clone(),
            what: "layer",
            expected,
            found,
        });
    }
    if expected_size != 0 && received != expected_size {
        return Err(ctx.manifest(format!(
            "layer {expected} is {received} bytes, the manifest says {expected_size}"
        )));
    }
    match unpacked {
        Ok(Ok(written)) => Ok(written),
        Ok(Err(LayerError::TooLarge(_))) => Err(PullError::TooLarge {
            reference: ctx.reference.clone(),
            layers: 0,
            needed: (budget >> 20).saturating_add(1),
            available: budget.saturating_add(MEMORY_MARGIN) >> 20,
            margin: MEMORY_MARGIN >> 20,
        }),
        Ok(Err(source)) => Err(PullError::Layer {
            reference: ctx.reference.clone(),
            digest: expected,
            source,
        }),
        Err(_) => Err(ctx.guest(
            format!("unpacking layer {expected}"),
            "the unpacking thread panicked",
        )),
    }
}

/// Downloads a layer into `tx`, hashing it; at most `size` bytes (the manifest's) are taken.
async fn stream_layer(
    ctx: &Ctx,
    client: &Client,
    reference: &Reference,
    layer_desc: &OciDescriptor,
    tx: &SyncSender<Vec<u8>>,
    size: u64,
) -> Result<(Vec<u8>, u64), PullError> {
    let mut sized = client
        .pull_blob_stream(reference, layer_desc)
        .await
        .map_err(|e| ctx.registry_error(e))?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut unpacker_gone = false;
    while let Some(chunk) = sized.stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            // oci-client checks the digest too and fails the last chunk when it does not
            // match: our own hash of everything received names the layer below.
            Err(_) if received >= size && size > 0 => break,
            Err(e) => {
                return Err(PullError::Unreachable {
                    reference: ctx.reference.clone(),
                    registry: ctx.registry.clone(),
                    reason: format!("downloading layer {}: {e}", layer_desc.digest),
                })
            }
        };
        received = received.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        if size > 0 && received > size {
            return Err(ctx.manifest(format!(
                "layer {} is larger than the {size} bytes the manifest says",
                layer_desc.digest
            )));
        }
        hasher.update(&chunk);
        if !unpacker_gone && tx.send(chunk.to_vec()).is_err() {
            // The unpacker failed; keep hashing so a digest mismatch is still named first.
            unpacker_gone = true;
        }
    }
    Ok((hasher.finalize().to_vec(), received))
}

/// The chunks of a layer as a [`Read`].
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Where TLS clients look for the system's CA bundle.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Writes the webpki roots as the system CA bundle unless there is one.
fn ensure_ca_bundle() -> std::io::Result<()> {
    use base64::Engine as _;
    let path = Path::new(CA_BUNDLE);
    if path.exists() {
        return Ok(());
    }
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, pem)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024))
        .ok_or_else(|| "no MemAvailable line".to_string())
}

/// A new directory in `store` for an image being unpacked.
fn tempdir_in(store: &Path) -> std::io::Result<PathBuf> {
    for n in 0u32..1000 {
        let dir = store.join(format!(".pulling-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free staging directory name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_back_in_order() {
        let (tx, rx) = sync_channel(4);
        tx.send(b"ab".to_vec()).unwrap();
        tx.send(Vec::new()).unwrap();
        tx.send(b"cde".to_vec()).unwrap();
        drop(tx);
        let mut r = ChunkReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "abcde");
    }

    #[test]
    fn a_pinned_manifest_must_match() {
        let ctx = Ctx {
            reference: "r".into(),
            registry: "g".into(),
        };
        let good = sha256_digest(b"{}");
        assert_eq!(check_manifest(&ctx, b"{}", Some(&good)).unwrap(), good);
        let e = check_manifest(&ctx, b"{ }", Some(&good)).unwrap_err();
        assert!(e.to_string().contains("manifest sha256:"), "{e}");
        assert!(mem_available().unwrap() > 0);
    }

    #[test]
    fn an_unreachable_registry_is_named() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let config = PullConfig {
            registries: vec![super::super::registry::RegistryEntry {
                location: "127.0.0.1:9".into(),
                insecure: true,
                ..Default::default()
            }],
            extra_root_certificates: Vec::new(),
        };
        let store = tempfile::tempdir().unwrap();
        let e = pull("127.0.0.1:9/busybox:1", &config, store.path()).unwrap_err();
        assert!(matches!(e, PullError::Unreachable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("registry 127.0.0.1:9 is unreachable"),
            "{e}"
        );
        // Nothing is left of the failed pull.
        assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
    }

    /// Pulls from a real registry named by `COFFER_TEST_REGISTRY` (`host:port` serving
    /// `busybox:latest` over HTTP, e.g. one in a network namespace of the test's own; run the
    /// test binary inside it). The CRI tests (tests/tests/e2e_guest_pull.rs) cover the same path
    /// in a guest; this one runs it on the host in seconds.
    #[test]
    #[ignore = "needs a registry: COFFER_TEST_REGISTRY=host:port"]
    fn pulls_and_unpacks_from_a_real_registry() {
        let host = std::env::var("COFFER_TEST_REGISTRY").expect("COFFER_TEST_REGISTRY");
        let config = PullConfig {
            registries: vec![super::super::registry::RegistryEntry {
                location: host.clone(),
                insecure: true,
                ..Default::default()
            }],
            extra_root_certificates: Vec::new(),
        };
        let store = tempfile::tempdir().unwrap();
        let image = pull(&format!("{host}/busybox:latest"), &config, store.path()).unwrap();
        assert!(image.digest.starts_with("sha256:"));
        assert!(image.dir.join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(image.dir.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let pinned = format!("{host}/busybox@{}", image.digest);
        let again = pull(&pinned, &config, store.path()).unwrap();
        assert_eq!(again.dir, image.dir);
        let wrong = format!("{host}/busybox@sha256:{}", "0".repeat(64));
        let e = pull(&wrong, &config, store.path()).unwrap_err();
        assert!(
            matches!(
                e,
                PullError::DigestMismatch { .. } | PullError::NotFound { .. }
            ),
            "{e}"
        );
        let e = pull(&format!("{host}/nothing:here"), &config, store.path()).unwrap_err();
        assert!(matches!(e, PullError::NotFound { .. }), "{e}");
    }
}
