//! The JSON documents of an image: OCI index and manifest (and their Docker schema-2 twins),
//! the image config, and `docker save`'s `manifest.json`; plus building the manifest and config
//! of an imported or converted image. It owns the wire shapes only; reading them out of an
//! archive is `archive.rs`'s job.
//!
//! The serde types are written by hand for the small subset we read rather than taken from
//! the `oci-spec` crate: that crate brings derive_builder, getset and strum (minutes of compile
//! time on CI's two cores) and validates strictly, refusing documents that real tools write
//! (`"Env": null` from Docker, descriptors without `mediaType`, Docker media types inside OCI
//! layouts). Unknown fields are ignored on purpose: these documents come from other tools.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::content::{Digest, StagedBlob};
use super::{ImageConfig, ImageError, Result};

/// OCI image manifest.
pub(super) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub(super) const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer.
pub(super) const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip OCI layer.
pub(super) const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd OCI layer.
pub(super) const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Largest manifest, index or config we read. Real ones are a few KiB; configs with long
/// histories reach a few hundred KiB. The limit stops a hostile archive from making us buffer a
/// multi-gigabyte "JSON" document.
pub(super) const MAX_DOCUMENT: u64 = 8 * 1024 * 1024;

/// `null` reads as the default (Docker writes `"Env": null`, `"RepoTags": null`).
pub(super) fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A content descriptor (OCI `descriptor.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    /// Media type; optional in practice (some writers omit it for index entries).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) media_type: String,
    /// `sha256:<hex>`.
    pub(super) digest: String,
    /// Length of the blob in bytes.
    pub(super) size: u64,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) platform: Option<Platform>,
    /// Annotations; the image name travels in `io.containerd.image.name` or
    /// `org.opencontainers.image.ref.name`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub(super) annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Platform {
    /// `amd64`, `arm64`, `unknown` (attestations), …
    #[serde(default)]
    pub(super) architecture: String,
    /// `linux`, …
    #[serde(default)]
    pub(super) os: String,
}

/// An index (OCI image index, Docker manifest list) or a manifest: one struct for both,
/// because a descriptor's media type is not always present and we tell them apart by content
/// (`manifests` vs `config` + `layers`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManifestOrIndex {
    /// Entries of an index.
    #[serde(default)]
    pub(super) manifests: Option<Vec<Descriptor>>,
    /// Config of a manifest.
    #[serde(default)]
    pub(super) config: Option<Descriptor>,
    /// Layers of a manifest, bottom first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) layers: Vec<Descriptor>,
}

/// The manifest we write for images we assemble ourselves (import, old `docker save` layout).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The image config (OCI `config.md`), the fields we use.
#[derive(Debug, Deserialize)]
pub(super) struct ConfigFile {
    /// CPU architecture.
    #[serde(default)]
    pub(super) architecture: String,
    /// Operating system.
    #[serde(default)]
    pub(super) os: String,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub(super) created: Option<String>,
    /// What a container starts from.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) config: ImageConfig,
    /// The layer chain.
    pub(super) rootfs: RootFs,
}

/// `rootfs` of a config.
#[derive(Debug, Deserialize)]
pub(super) struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub(super) kind: String,
    /// Uncompressed layer digests, bottom first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) diff_ids: Vec<String>,
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerSaveEntry {
    /// Path of the config in the archive (`<hex>.json` or `blobs/sha256/<hex>`).
    pub(super) config: String,
    /// Tags, possibly `null`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) repo_tags: Vec<String>,
    /// Paths of the layer tars, bottom first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) layers: Vec<String>,
}

/// Parses a JSON document read from an archive or the store, naming it in the error.
pub(super) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Serialises a document we write.
pub(super) fn to_vec<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })
}

/// The manifest of an image we assemble: config plus `(media type, blob)` per layer.
pub(super) fn build_manifest(
    config: &StagedBlob,
    layers: &[(&str, &StagedBlob)],
) -> Result<Vec<u8>> {
    let desc = |media_type: &str, blob: &StagedBlob| Descriptor {
        media_type: media_type.to_owned(),
        digest: blob.digest.to_string(),
        size: blob.size,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let manifest = OciManifest {
        schema_version: 2,
        media_type: MEDIA_OCI_MANIFEST,
        config: desc(MEDIA_OCI_CONFIG, config),
        layers: layers.iter().map(|(m, b)| desc(m, b)).collect(),
    };
    to_vec(&manifest, "image manifest")
}

/// The config `docker import` writes: amd64/linux, one layer, an empty container config and
/// one history line.
pub(super) fn build_import_config(diff_id: &Digest, created: &str) -> Result<Vec<u8>> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [{ "created": created, "created_by": "shoal image import", "comment": "Imported from -" }],
    });
    to_vec(&config, "image config")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn config_tolerates_docker_nulls() {
        let doc = br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],
            "Entrypoint":null,"Labels":null},"rootfs":{"type":"layers","diff_ids":null}}"#;
        let c: ConfigFile = parse(doc, "config").unwrap();
        assert!(c.config.env.is_empty());
        assert_eq!(c.config.cmd, Some(vec!["sh".to_owned()]));
        assert!(c.rootfs.diff_ids.is_empty());

        let doc = br#"{"rootfs":{"type":"layers","diff_ids":[]},"config":null}"#;
        let c: ConfigFile = parse(doc, "config").unwrap();
        assert_eq!(c.config, ImageConfig::default());
    }

    #[test]
    fn manifest_or_index_by_content() {
        let idx: ManifestOrIndex = parse(
            br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:aa","size":3,
            "platform":{"architecture":"amd64","os":"linux"},"annotations":null}]}"#,
            "index",
        )
        .unwrap();
        assert_eq!(idx.manifests.unwrap().len(), 1);
        assert!(idx.config.is_none());
    }
}
