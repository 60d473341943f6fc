//! `shoal image …`: load, import, ls, rm, inspect, with Docker's flags and output.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::{image_removal, import_request, load_request};
use tabwriter::TabWriter;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{DaemonError, OrDaemonError, EXIT_FAILED};
use crate::client::Client;
use crate::units::{human_duration, human_size, since};

/// `shoal image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(ImportArgs),
    /// List images
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
}

/// `image load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    pub quiet: bool,
}

/// `image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain, gzip or zstd), or `-` for STDIN
    #[arg(value_name = "file|-")]
    pub file: String,
    /// Name for the image
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub reference: String,
}

/// `image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
}

/// `image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force removal of the image
    #[arg(short, long)]
    pub force: bool,
    /// Images to remove
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `image inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Images to inspect
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// Runs an image subcommand; returns the exit code.
pub async fn run(client: &Client, command: ImageCommand) -> anyhow::Result<i32> {
    match command {
        ImageCommand::Load(args) => load(client, args).await,
        ImageCommand::Import(args) => import(client, args).await,
        ImageCommand::Ls(args) => ls(client, args).await,
        ImageCommand::Rm(args) => rm(client, args).await,
        ImageCommand::Inspect(args) => inspect(client, args).await,
    }
}

/// Where archive bytes come from.
enum Input {
    Stdin,
    File(PathBuf, tokio::fs::File),
}

impl Input {
    async fn open(path: Option<PathBuf>) -> anyhow::Result<Input> {
        match path {
            None => Ok(Input::Stdin),
            Some(path) => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .with_context(|| format!("open {}", path.display()))?;
                Ok(Input::File(path, file))
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Input::Stdin => "standard input".to_string(),
            Input::File(path, _) => path.display().to_string(),
        }
    }
}

/// Streams `input` to the daemon as `first`, then chunks, and returns the call's answer.
/// A read error cancels the call, so the daemon never takes a truncated archive for whole.
async fn upload<T, R, F>(
    input: Input,
    first: T,
    chunk: fn(Vec<u8>) -> T,
    call: impl FnOnce(ReceiverStream<T>) -> F,
) -> anyhow::Result<R>
where
    T: Send + 'static,
    F: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let (tx, rx) = mpsc::channel(4);
    tx.send(first)
        .await
        .map_err(|_| anyhow::anyhow!("the request stream closed before it started"))?;
    let name = input.name();
    let read = async move {
        let mut reader: Box<dyn AsyncRead + Unpin + Send> = match input {
            Input::Stdin => Box::new(tokio::io::stdin()),
            Input::File(_, file) => Box::new(file),
        };
        loop {
            let mut buf = vec![0u8; shoal_proto::CHUNK_SIZE];
            let n = reader
                .read(&mut buf)
                .await
                .with_context(|| format!("read {name}"))?;
            if n == 0 {
                return anyhow::Ok(());
            }
            buf.truncate(n);
            if tx.send(chunk(buf)).await.is_err() {
                // The call ended early; its answer says why.
                return Ok(());
            }
        }
    };
    let call = call(ReceiverStream::new(rx));
    tokio::pin!(call);
    tokio::pin!(read);
    tokio::select! {
        answer = &mut call => Ok(answer.or_daemon_error()?.into_inner()),
        read = &mut read => {
            read?;
            Ok(call.await.or_daemon_error()?.into_inner())
        }
    }
}

async fn load(client: &Client, args: LoadArgs) -> anyhow::Result<i32> {
    if args.input.is_none() && std::io::stdin().is_terminal() {
        bail!("requested load from stdin, but stdin is empty");
    }
    let input = Input::open(args.input).await?;
    let mut images = client.images.clone();
    let first = pb::LoadRequest {
        msg: Some(load_request::Msg::Options(pb::LoadOptions {})),
    };
    let chunk = |data| pb::LoadRequest {
        msg: Some(load_request::Msg::Chunk(data)),
    };
    let loaded = upload(input, first, chunk, |stream| async move {
        images.load(stream).await
    })
    .await?;
    if !args.quiet {
        for image in loaded.images {
            if image.repo_tags.is_empty() {
                println!("Loaded image ID: {}", image.id);
            }
            for tag in image.repo_tags {
                println!("Loaded image: {tag}");
            }
        }
    }
    Ok(0)
}

async fn import(client: &Client, args: ImportArgs) -> anyhow::Result<i32> {
    let path = (args.file != "-").then(|| PathBuf::from(&args.file));
    let input = Input::open(path).await?;
    let mut images = client.images.clone();
    let first = pb::ImportRequest {
        msg: Some(import_request::Msg::Options(pb::ImportOptions {
            reference: args.reference,
        })),
    };
    let chunk = |data| pb::ImportRequest {
        msg: Some(import_request::Msg::Chunk(data)),
    };
    let imported = upload(input, first, chunk, |stream| async move {
        images.import(stream).await
    })
    .await?;
    let image = imported
        .image
        .context("the daemon's import answer has no image")?;
    println!("{}", image.id);
    Ok(0)
}

/// `name:tag` → (`name`, `tag`); the tag is after the last `:` that is not part of a
/// registry's `host:port`.
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "<none>"),
    }
}

/// The image id as `image ls` shows it: 12 hex digits, or the full `sha256:…`.
fn display_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        return id;
    }
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..12.min(hex.len())]
}

async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<i32> {
    let images = client
        .images
        .clone()
        .list(pb::ListImagesRequest {})
        .await
        .or_daemon_error()?
        .into_inner()
        .images;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for image in &images {
            let id = display_id(&image.id, args.no_trunc);
            if seen.insert(id.to_string()) {
                writeln!(out, "{id}")?;
            }
        }
        return Ok(0);
    }
    let now = SystemTime::now();
    let mut table = // Go's tabwriter counts the padding in the minimum width (10), Rust's does not.
    TabWriter::new(out).minwidth(7).padding(3);
    writeln!(table, "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE")?;
    for image in &images {
        let created = since(&image.created, now)
            .map(|d| format!("{} ago", human_duration(d)))
            .unwrap_or_else(|| "N/A".to_string());
        let id = display_id(&image.id, args.no_trunc);
        let size = human_size(image.size);
        let tags: Vec<(&str, &str)> = if image.repo_tags.is_empty() {
            vec![("<none>", "<none>")]
        } else {
            image.repo_tags.iter().map(|t| split_tag(t)).collect()
        };
        for (repo, tag) in tags {
            writeln!(table, "{repo}\t{tag}\t{id}\t{created}\t{size}")?;
        }
    }
    table.flush()?;
    Ok(0)
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<i32> {
    let mut images = client.images.clone();
    let mut failed = false;
    for reference in args.images {
        let request = pb::RemoveImageRequest {
            reference,
            force: args.force,
        };
        match images.remove(request).await {
            Ok(answer) => {
                for removal in answer.into_inner().removals {
                    let verb = match removal.kind() {
                        image_removal::Kind::Untagged => "Untagged",
                        image_removal::Kind::Deleted | image_removal::Kind::Unspecified => {
                            "Deleted"
                        }
                    };
                    println!("{verb}: {}", removal.reference);
                }
            }
            Err(status) => {
                eprintln!("{}", DaemonError(status));
                failed = true;
            }
        }
    }
    Ok(if failed { EXIT_FAILED } else { 0 })
}

async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let images = client.images.clone();
    super::inspect::inspect_each(args.images, |reference| {
        let mut images = images.clone();
        async move {
            let answer = images
                .inspect(pb::InspectImageRequest { reference })
                .await?;
            Ok(answer.into_inner().json)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_registry_port() {
        assert_eq!(split_tag("demo:latest"), ("demo", "latest"));
        assert_eq!(
            split_tag("localhost:5000/demo:1.0"),
            ("localhost:5000/demo", "1.0")
        );
        assert_eq!(
            split_tag("localhost:5000/demo"),
            ("localhost:5000/demo", "<none>")
        );
    }

    #[test]
    fn ids_are_shortened_like_docker() {
        let id = "sha256:0123456789abcdef0123";
        assert_eq!(display_id(id, false), "0123456789ab");
        assert_eq!(display_id(id, true), id);
    }
}
