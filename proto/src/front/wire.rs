//! The front socket's transport: length-prefixed prost messages on a Unix stream, one call
//! at a time per connection, answered in order.
//!
//! A gRPC stack (HTTP/2 framing, HPACK, a buffer task, a task per stream on each side) cost
//! more CPU than the whole rejection of a garbage request did, so this local hop uses the
//! messages of `front.proto` without it. Every frame is
//!
//! ```text
//! length: u32, big-endian   the bytes after this field: 1 + len(message), at most MAX_FRAME_BYTES
//! kind:   u8                what the message is (the `KIND_*` constants)
//! message                   the prost encoding of that kind's message
//! ```
//!
//! The web front writes a call frame and reads exactly one reply frame before its next call
//! on the same connection; it keeps idle connections open for the next calls. A frame that
//! is too long, of an unknown kind or that does not decode closes the connection.

use std::future::Future;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::front::v1::{FrontReply, FrontRequest, NoticesReply, NoticesRequest};

/// Largest frame either side accepts (length field excluded): bodies are bounded well below.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// `SubmitApproval(FrontRequest)`.
pub const KIND_SUBMIT_APPROVAL: u8 = 1;
/// `Enroll(FrontRequest)`.
pub const KIND_ENROLL: u8 = 2;
/// `Notices(NoticesRequest)`.
pub const KIND_NOTICES: u8 = 3;
/// The answer to a submit or an enroll: `FrontReply`.
pub const KIND_FRONT_REPLY: u8 = 0x81;
/// The answer to `Notices`: `NoticesReply`.
pub const KIND_NOTICES_REPLY: u8 = 0x83;
/// The call was not served (e.g. a remote address that does not parse): a UTF-8 reason.
pub const KIND_FAILURE: u8 = 0xEE;

/// A call from the web front.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// `POST /v1/approvals`.
    SubmitApproval(FrontRequest),
    /// `POST /v1/enroll`.
    Enroll(FrontRequest),
    /// The self-shutdown state to enforce.
    Notices(NoticesRequest),
}

/// The controller's answer to one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The answer to a submit or an enroll.
    Front(FrontReply),
    /// The answer to `Notices`.
    Notices(NoticesReply),
    /// The call was not served, and why.
    Failure(String),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("front socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection between frames.
    #[error("front socket closed by the peer")]
    Closed,
    /// A frame longer than [`MAX_FRAME_BYTES`], empty, or cut short.
    #[error("bad front socket frame: {0}")]
    Frame(&'static str),
    /// A kind this side does not expect here.
    #[error("unexpected front socket frame kind {0:#04x}")]
    Kind(u8),
    /// The message does not decode as its kind's.
    #[error("front socket message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl Call {
    fn kind(&self) -> u8 {
        match self {
            Self::SubmitApproval(_) => KIND_SUBMIT_APPROVAL,
            Self::Enroll(_) => KIND_ENROLL,
            Self::Notices(_) => KIND_NOTICES,
        }
    }

    /// The whole frame of this call.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::SubmitApproval(m) | Self::Enroll(m) => frame(self.kind(), m),
            Self::Notices(m) => frame(self.kind(), m),
        }
    }

    /// Decodes a call frame's kind and message.
    pub fn decode(kind: u8, message: Bytes) -> Result<Self, WireError> {
        Ok(match kind {
            KIND_SUBMIT_APPROVAL => Self::SubmitApproval(FrontRequest::decode(message)?),
            KIND_ENROLL => Self::Enroll(FrontRequest::decode(message)?),
            KIND_NOTICES => Self::Notices(NoticesRequest::decode(message)?),
            other => return Err(WireError::Kind(other)),
        })
    }
}

impl Reply {
    /// The whole frame of this reply.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Front(m) => frame(KIND_FRONT_REPLY, m),
            Self::Notices(m) => frame(KIND_NOTICES_REPLY, m),
            Self::Failure(reason) => {
                let mut out = header(KIND_FAILURE, reason.len());
                out.extend_from_slice(reason.as_bytes());
                out
            }
        }
    }

    /// Decodes a reply frame's kind and message.
    pub fn decode(kind: u8, message: Bytes) -> Result<Self, WireError> {
        Ok(match kind {
            KIND_FRONT_REPLY => Self::Front(FrontReply::decode(message)?),
            KIND_NOTICES_REPLY => Self::Notices(NoticesReply::decode(message)?),
            KIND_FAILURE => Self::Failure(String::from_utf8_lossy(&message).into_owned()),
            other => return Err(WireError::Kind(other)),
        })
    }
}

fn header(kind: u8, message_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message_len);
    // Callers bound messages far below 4 GiB; a longer one is refused by the reader.
    out.put_u32(u32::try_from(1 + message_len).unwrap_or(u32::MAX));
    out.put_u8(kind);
    out
}

fn frame(kind: u8, message: &impl prost::Message) -> Vec<u8> {
    let mut out = header(kind, message.encoded_len());
    // Encoding into a Vec cannot run out of room.
    let _ = message.encode(&mut out);
    out
}

/// One end of a front socket connection: the stream and what was read of the next frame.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    buffer: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// The next frame's kind and message; [`WireError::Closed`] when the peer closed the
    /// connection between frames. Cancel-safe: what was read stays buffered.
    pub async fn read_frame(&mut self) -> Result<(u8, Bytes), WireError> {
        loop {
            if self.buffer.len() >= 4 {
                let declared = u32::from_be_bytes([
                    self.buffer[0],
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                ]) as usize;
                if declared == 0 {
                    return Err(WireError::Frame("empty frame"));
                }
                if declared > MAX_FRAME_BYTES {
                    return Err(WireError::Frame("frame too long"));
                }
                if self.buffer.len() >= 4 + declared {
                    self.buffer.advance(4);
                    let mut message = self.buffer.split_to(declared).freeze();
                    let kind = message.get_u8();
                    return Ok((kind, message));
                }
                self.buffer.reserve(4 + declared - self.buffer.len());
            } else {
                self.buffer.reserve(4096);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(if self.buffer.is_empty() {
                    WireError::Closed
                } else {
                    WireError::Frame("connection closed inside a frame")
                });
            }
        }
    }

    /// Writes a whole frame.
    pub async fn write_frame(&mut self, frame: &[u8]) -> Result<(), WireError> {
        self.stream.write_all(frame).await?;
        Ok(())
    }

    /// One call and its reply (the web front's side).
    pub async fn call(&mut self, call: &Call) -> Result<Reply, WireError> {
        self.write_frame(&call.encode()).await?;
        let (kind, message) = self.read_frame().await?;
        Reply::decode(kind, message)
    }
}

/// What the controller does with each call.
pub trait FrontService: Send + Sync {
    /// Decides an approval request.
    fn submit_approval(
        &self,
        request: FrontRequest,
    ) -> impl Future<Output = Result<FrontReply, String>> + Send;
    /// Decides an enrollment.
    fn enroll(
        &self,
        request: FrontRequest,
    ) -> impl Future<Output = Result<FrontReply, String>> + Send;
    /// The self-shutdown state.
    fn notices(&self) -> NoticesReply;
}

/// Serves calls on one connection until the peer closes it, a frame is bad, or `stop`
/// resolves between calls (a call being served is finished and answered first).
pub async fn serve_connection<S, H>(
    mut connection: Connection<S>,
    service: &H,
    stop: impl Future<Output = ()>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FrontService,
{
    tokio::pin!(stop);
    loop {
        let (kind, message) = tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            frame = connection.read_frame() => match frame {
                Ok(frame) => frame,
                Err(WireError::Closed) => return Ok(()),
                Err(err) => return Err(err),
            },
        };
        let reply = match Call::decode(kind, message)? {
            Call::SubmitApproval(request) => answered(service.submit_approval(request).await),
            Call::Enroll(request) => answered(service.enroll(request).await),
            Call::Notices(NoticesRequest {}) => Reply::Notices(service.notices()),
        };
        let frame = reply.encode();
        connection.write_frame(&frame).await?;
    }
}

fn answered(result: Result<FrontReply, String>) -> Reply {
    match result {
        Ok(reply) => Reply::Front(reply),
        Err(reason) => Reply::Failure(reason),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn request(body: &[u8]) -> FrontRequest {
        FrontRequest {
            body: body.to_vec(),
            remote_address: "192.0.2.7".into(),
            request_id: "r1".into(),
        }
    }

    struct Echo;

    impl FrontService for Echo {
        async fn submit_approval(&self, request: FrontRequest) -> Result<FrontReply, String> {
            if request.body.is_empty() {
                return Err("empty".into());
            }
            Ok(FrontReply {
                http_status: 200,
                body: request.body,
            })
        }
        async fn enroll(&self, request: FrontRequest) -> Result<FrontReply, String> {
            Ok(FrontReply {
                http_status: 201,
                body: request.request_id.into_bytes(),
            })
        }
        fn notices(&self) -> NoticesReply {
            NoticesReply {
                www_shutdown: true,
                www_message: "maintenance".into(),
                ..NoticesReply::default()
            }
        }
    }

    #[tokio::test]
    async fn calls_are_answered_in_order_on_one_connection() {
        let (client, server) = tokio::io::duplex(64);
        let served = tokio::spawn(async move {
            serve_connection(Connection::new(server), &Echo, std::future::pending()).await
        });
        let mut client = Connection::new(client);
        // A body larger than the pipe's buffer arrives in pieces and is reassembled.
        let big = vec![b'x'; 10_000];
        let reply = client
            .call(&Call::SubmitApproval(request(&big)))
            .await
            .unwrap();
        assert_eq!(
            reply,
            Reply::Front(FrontReply {
                http_status: 200,
                body: big
            })
        );
        let reply = client.call(&Call::Enroll(request(b"{}"))).await.unwrap();
        assert_eq!(
            reply,
            Reply::Front(FrontReply {
                http_status: 201,
                body: b"r1".to_vec()
            })
        );
        let reply = client
            .call(&Call::SubmitApproval(request(b"")))
            .await
            .unwrap();
        assert_eq!(reply, Reply::Failure("empty".into()));
        let Reply::Notices(notices) = client
            .call(&Call::Notices(NoticesRequest {}))
            .await
            .unwrap()
        else {
            panic!("not a notices reply");
        };
        assert!(notices.www_shutdown);
        drop(client);
        assert!(
            served.await.unwrap().is_ok(),
            "a close between calls is clean"
        );
    }

    async fn served_after(bytes: &[u8]) -> Result<(), WireError> {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(bytes).await.unwrap();
        drop(client);
        serve_connection(Connection::new(server), &Echo, std::future::pending()).await
    }

    #[tokio::test]
    async fn bad_frames_close_the_connection() {
        let over = u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_be_bytes();
        assert!(matches!(
            served_after(&over).await,
            Err(WireError::Frame("frame too long"))
        ));
        assert!(matches!(
            served_after(&[0, 0, 0, 0]).await,
            Err(WireError::Frame("empty frame"))
        ));
        assert!(matches!(
            served_after(&[0, 0, 0, 1, 0x42]).await,
            Err(WireError::Kind(0x42))
        ));
        // A reply kind is not a call.
        assert!(matches!(
            served_after(&[0, 0, 0, 1, KIND_FRONT_REPLY]).await,
            Err(WireError::Kind(KIND_FRONT_REPLY))
        ));
        // Field 1 (bytes) declaring 100 bytes with 1 present.
        assert!(matches!(
            served_after(&[0, 0, 0, 4, KIND_SUBMIT_APPROVAL, 0x0a, 100, 1]).await,
            Err(WireError::Decode(_))
        ));
        assert!(matches!(
            served_after(&[0, 0, 0, 9, KIND_SUBMIT_APPROVAL]).await,
            Err(WireError::Frame("connection closed inside a frame"))
        ));
    }

    #[tokio::test]
    async fn stop_ends_the_connection_between_calls() {
        let (_client, server) = tokio::io::duplex(64);
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            serve_connection(Connection::new(server), &Echo, async {}),
        )
        .await
        .expect("stop is honoured while idle");
        assert!(result.is_ok());
    }
}
