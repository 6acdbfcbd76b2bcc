//! A blocking control-socket client: connect, handshake, then one request at a time.

use memout_protocol::codec::{self, encode_frame, read_frame};
use memout_protocol::control::{CONTROL_VERSION, Request, Response};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Errors talking to a control socket (a refused request is a [`Response::Error`], not this).
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("control connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be read or decoded.
    #[error(transparent)]
    Codec(#[from] codec::Error),
    /// The server refused the handshake.
    #[error("server refused the connection: {0}")]
    Handshake(String),
}

/// A connected, handshaken client.
pub struct Client {
    stream: UnixStream,
    server: String,
}

impl Client {
    /// Connects to `path` and does the version handshake. `timeout` bounds each reply.
    pub fn connect(path: &Path, name: &str, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Self::over(stream, name, timeout)
    }

    /// Does the version handshake over an already connected `stream` (a socket pair, or a
    /// connection made some other way). `timeout` bounds each reply.
    pub fn over(stream: UnixStream, name: &str, timeout: Duration) -> Result<Self, ClientError> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Self {
            stream,
            server: String::new(),
        };
        match c.request(&Request::Hello {
            version: CONTROL_VERSION,
            client: name.to_string(),
        })? {
            Response::Hello { server, .. } => c.server = server,
            Response::Error { message, .. } => return Err(ClientError::Handshake(message)),
            other => {
                return Err(ClientError::Handshake(format!(
                    "unexpected reply {other:?}"
                )));
            }
        }
        Ok(c)
    }

    /// The server's name and version.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sets how long a reply may take (a waited-for resize may take long).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        Ok(self.stream.set_read_timeout(t)?)
    }

    /// Sends `req` and returns the server's answer. If the server closed the connection
    /// before the request could be sent, the answer it left (e.g. a refusal) is still read.
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        if let Err(e) = self.stream.write_all(&encode_frame(req)?) {
            return match read_frame(&mut self.stream).map(|p| codec::decode::<Response>(&p)) {
                Ok(Ok(r @ Response::Error { .. })) => Ok(r),
                _ => Err(e.into()),
            };
        }
        let payload = read_frame(&mut self.stream)?;
        Ok(codec::decode(&payload)?)
    }
}
