//! `shoal inspect`: Docker's object-agnostic inspect — each name is looked up as a
//! container first, then as an image.

use anyhow::Context;
use clap::Args;
use shoal_proto::node::v1 as pb;
use tonic::Code;

use super::{inspect_json, DaemonError, EXIT_FAILED};
use crate::client::Client;

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Containers or images to inspect
    #[arg(required = true, value_name = "NAME|ID")]
    pub objects: Vec<String>,
}

/// Prints the inspect documents of the objects as one JSON array, and the missing ones as
/// errors after it (exit 1 if any is missing).
pub async fn inspect(client: &Client, args: InspectArgs) -> anyhow::Result<i32> {
    let mut containers = client.containers.clone();
    let mut images = client.images.clone();
    let mut docs = Vec::new();
    let mut missing = Vec::new();
    for name in args.objects {
        let json = match containers
            .inspect(pb::InspectContainerRequest { id: name.clone() })
            .await
        {
            Ok(answer) => answer.into_inner().json,
            Err(status) if status.code() == Code::NotFound => {
                match images
                    .inspect(pb::InspectImageRequest {
                        reference: name.clone(),
                    })
                    .await
                {
                    Ok(answer) => answer.into_inner().json,
                    Err(status) if status.code() == Code::NotFound => {
                        missing.push(name);
                        continue;
                    }
                    Err(status) => return Err(DaemonError(status).into()),
                }
            }
            Err(status) => return Err(DaemonError(status).into()),
        };
        docs.push(
            serde_json::from_str::<serde_json::Value>(&json)
                .context("the daemon sent invalid inspect JSON")?,
        );
    }
    println!("{}", inspect_json(&docs));
    for name in &missing {
        eprintln!("Error: No such object: {name}");
    }
    Ok(if missing.is_empty() { 0 } else { EXIT_FAILED })
}

/// `container inspect` and `image inspect`: `fetch` answers one name with its inspect JSON.
/// Prints the found documents as one JSON array and the missing ones as errors after it, as
/// Docker does (exit 1 if any is missing); other errors end the command.
pub async fn inspect_each<F, Fut>(names: Vec<String>, mut fetch: F) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, tonic::Status>>,
{
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for name in names {
        match fetch(name).await {
            Ok(json) => docs
                .push(serde_json::from_str(&json).context("the daemon sent invalid inspect JSON")?),
            Err(status) if status.code() == Code::NotFound => {
                errors.push(format!("Error: {}", status.message()))
            }
            Err(status) => return Err(DaemonError(status).into()),
        }
    }
    println!("{}", inspect_json(&docs));
    for error in &errors {
        eprintln!("{error}");
    }
    Ok(if errors.is_empty() { 0 } else { EXIT_FAILED })
}
