//! The `Images` service: the node's image store. Import and load receive the archive as a
//! stream of chunks and hand it to the (blocking) store as a `Read`, so an archive is never
//! held in memory whole; a client that goes away mid-stream makes the read fail, and the
//! store's all-or-nothing load leaves nothing behind.

use std::io::{self, Read};
use std::sync::Arc;

use shoal_proto::node::v1 as pb;
use shoal_proto::node::v1::images_server::Images;
use shoal_proto::node::v1::{import_request, load_request};
use tokio::runtime::Handle;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{image_to_wire, removal_to_wire};
use super::error::ApiError;
use super::{blocking, Daemon};

/// The `Images` service.
#[derive(Debug)]
pub struct ImagesApi {
    daemon: Arc<Daemon>,
}

impl ImagesApi {
    /// The service over the daemon's shared state.
    pub fn new(daemon: Arc<Daemon>) -> ImagesApi {
        ImagesApi { daemon }
    }
}

/// A blocking `Read` over the chunks of a client stream; used on the blocking pool only.
struct ChunkReader<T> {
    stream: Streaming<T>,
    /// Takes the bytes out of a message; `None` for a message that is not a chunk.
    chunk: fn(T) -> Option<Vec<u8>>,
    handle: Handle,
    buf: Vec<u8>,
    pos: usize,
}

impl<T> Read for ChunkReader<T> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let next = self.handle.block_on(self.stream.message());
            match next {
                Ok(Some(message)) => {
                    let data = (self.chunk)(message).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            "only the first message may carry options",
                        )
                    })?;
                    self.buf = data;
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                // The client failed or went away: the archive is incomplete.
                Err(status) => return Err(io::Error::other(status)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[tonic::async_trait]
impl Images for ImagesApi {
    async fn import(
        &self,
        request: Request<Streaming<pb::ImportRequest>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let mut stream = request.into_inner();
        let options = match stream.message().await? {
            Some(pb::ImportRequest {
                msg: Some(import_request::Msg::Options(options)),
            }) => options,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "import: the first message must carry the options".into(),
                )
                .into())
            }
        };
        let mut reader = ChunkReader {
            stream,
            chunk: |m: pb::ImportRequest| match m.msg {
                Some(import_request::Msg::Chunk(data)) => Some(data),
                _ => None,
            },
            handle: Handle::current(),
            buf: Vec::new(),
            pos: 0,
        };
        let runtime = self.daemon.runtime.clone();
        let image =
            blocking(move || Ok(runtime.images().import(&mut reader, &options.reference)?)).await?;
        tracing::info!(image.id = %image.id, tags = ?image.repo_tags, "imported");
        self.daemon
            .swarm
            .replicate_images(image.repo_tags.clone())
            .await;
        Ok(Response::new(pb::ImportResponse {
            image: Some(image_to_wire(&image)),
        }))
    }

    async fn load(
        &self,
        request: Request<Streaming<pb::LoadRequest>>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        let mut stream = request.into_inner();
        match stream.message().await? {
            Some(pb::LoadRequest {
                msg: Some(load_request::Msg::Options(_)),
            }) => {}
            _ => {
                return Err(ApiError::InvalidArgument(
                    "load: the first message must carry the options".into(),
                )
                .into())
            }
        }
        let mut reader = ChunkReader {
            stream,
            chunk: |m: pb::LoadRequest| match m.msg {
                Some(load_request::Msg::Chunk(data)) => Some(data),
                _ => None,
            },
            handle: Handle::current(),
            buf: Vec::new(),
            pos: 0,
        };
        let runtime = self.daemon.runtime.clone();
        let images = blocking(move || Ok(runtime.images().load(&mut reader)?)).await?;
        for image in &images {
            tracing::info!(image.id = %image.id, tags = ?image.repo_tags, "loaded");
        }
        let tags = images.iter().flat_map(|i| i.repo_tags.clone()).collect();
        self.daemon.swarm.replicate_images(tags).await;
        Ok(Response::new(pb::LoadResponse {
            images: images.iter().map(image_to_wire).collect(),
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let runtime = self.daemon.runtime.clone();
        let images = blocking(move || Ok(runtime.images().list()?)).await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.iter().map(image_to_wire).collect(),
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let runtime = self.daemon.runtime.clone();
        let removed =
            blocking(move || Ok(runtime.remove_image(&request.reference, request.force)?)).await?;
        Ok(Response::new(pb::RemoveImageResponse {
            removals: removed.into_iter().map(removal_to_wire).collect(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        let reference = request.into_inner().reference;
        let runtime = self.daemon.runtime.clone();
        let json = blocking(move || {
            let store = runtime.images();
            let image = store.resolve(&reference)?;
            Ok(store.inspect(&image)?.to_string())
        })
        .await?;
        Ok(Response::new(pb::InspectImageResponse { json }))
    }
}
