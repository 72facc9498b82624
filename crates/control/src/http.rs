//! The one HTTP client between cloudplay processes: fleet members calling each other over
//! pinned TLS, and the native client and tests calling a server in plain HTTP. hyper's
//! HTTP/1.1 client, one connection per request, every step bounded in time and the
//! answer bounded in size.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::identity::fleet_server_name;

/// Where a request goes: `host:port`, in plain HTTP or over TLS with the given
/// configuration (the fleet's pins the other member's certificate).
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Plain(&'a str),
    Tls(&'a str, &'a Arc<ClientConfig>),
    /// Plain HTTP to this address exactly (already resolved and checked), with `Host`
    /// the given authority: nothing is resolved again between the check and the connect.
    PlainAt(std::net::SocketAddr, &'a str),
}

impl<'a> Target<'a> {
    /// The target of a base URL: `https://host:port` with `tls`, or `http://host:port`.
    pub fn of_url(url: &'a str, tls: Option<&'a Arc<ClientConfig>>) -> Result<Target<'a>, HttpError> {
        let refuse = || HttpError::Url(format!("{url:?} is not http://host:port or https://host:port"));
        let (authority, tls) = match (url.strip_prefix("https://"), url.strip_prefix("http://"), tls) {
            (Some(rest), _, Some(tls)) => (rest, Some(tls)),
            (None, Some(rest), None) => (rest, None),
            _ => return Err(refuse()),
        };
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(refuse());
        }
        Ok(match tls {
            Some(tls) => Target::Tls(authority, tls),
            None => Target::Plain(authority),
        })
    }

    fn authority(&self) -> &'a str {
        match self {
            Target::Plain(authority) | Target::Tls(authority, _) | Target::PlainAt(_, authority) => authority,
        }
    }
}

/// Time and size bounds of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// The whole exchange, connection included.
    pub total: Duration,
    pub max_response: usize,
}

impl Limits {
    /// Between fleet members: JSON answers, quickly; the largest is a game's save state
    /// (base64, at most 1 MiB before encoding).
    pub const FLEET: Limits =
        Limits { connect: Duration::from_secs(3), total: Duration::from_secs(5), max_response: 2 << 20 };
    /// A client of the public API (pages and documents included).
    pub const CLIENT: Limits =
        Limits { connect: Duration::from_secs(5), total: Duration::from_secs(10), max_response: 8 << 20 };
}

/// An answer: status, headers (names lower-case, in order) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("bad request: {0}")]
    Request(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Protocol(String),
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Sends one request and reads the whole answer.
pub async fn send(
    target: Target<'_>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    limits: Limits,
) -> Result<Response, HttpError> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, target.authority())
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request =
        builder.body(Full::new(Bytes::from(body))).map_err(|e| HttpError::Request(e.to_string()))?;
    let exchange = async {
        let connect = async {
            match target {
                Target::PlainAt(addr, _) => TcpStream::connect(addr).await,
                _ => TcpStream::connect(target.authority()).await,
            }
        };
        let stream = tokio::time::timeout(limits.connect, connect)
            .await
            .map_err(|_| HttpError::TimedOut(limits.connect))?
            .map_err(|e| HttpError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        match target {
            Target::Plain(_) | Target::PlainAt(..) => exchange(stream, request, limits.max_response).await,
            Target::Tls(_, config) => {
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(fleet_server_name(), stream)
                    .await
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
                exchange(stream, request, limits.max_response).await
            }
        }
    };
    tokio::time::timeout(limits.total, exchange).await.map_err(|_| HttpError::TimedOut(limits.total))?
}

/// [`send`] for callers without a runtime (tests, the native client): runs the request on
/// a runtime of its own, on a thread of its own when the caller is inside one already.
pub fn send_blocking(
    target: Target<'_>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    limits: Limits,
) -> Result<Response, HttpError> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HttpError::Connect(e.to_string()))?
            .block_on(send(target, method, path, headers, body, limits))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|scope| {
        scope.spawn(run).join().unwrap_or_else(|_| Err(HttpError::Protocol("client thread panicked".into())))
    })
}

async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
    max_response: usize,
) -> Result<Response, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |e: hyper::Error| HttpError::Protocol(e.to_string());
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(protocol)?;
    // The connection is driven beside the request and dropped with it.
    let connection = tokio::spawn(connection);
    let _abort = AbortOnDrop(connection);
    let answer = sender.send_request(request).await.map_err(protocol)?;
    let status = answer.status().as_u16();
    let headers = answer
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let body = Limited::new(answer.into_body(), max_response).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            HttpError::TooLarge(max_response)
        } else {
            HttpError::Protocol(e.to_string())
        }
    })?;
    Ok(Response { status, headers, body: body.to_bytes().to_vec() })
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_base_urls_are_targets() {
        assert!(matches!(Target::of_url("http://127.0.0.1:80", None), Ok(Target::Plain("127.0.0.1:80"))));
        assert!(matches!(Target::of_url("http://h:1/", None), Ok(Target::Plain("h:1"))));
        for bad in ["ftp://h:1", "h:1", "http://", "http://h:1/path", "http://u@h:1", "http://h:1?q"] {
            assert!(Target::of_url(bad, None).is_err(), "{bad}");
        }
        // https needs a TLS configuration, http must not have one.
        assert!(Target::of_url("https://h:1", None).is_err());
    }

    #[tokio::test]
    async fn an_oversized_or_missing_answer_is_an_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for body_len in [10usize, 100_000] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nX-A: b\r\n\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&vec![b'x'; body_len]).await;
            }
        });
        let limits = Limits { max_response: 1000, ..Limits::CLIENT };
        let small = send(Target::Plain(&addr), "GET", "/", &[], Vec::new(), limits).await.unwrap();
        assert_eq!((small.status, small.body.len(), small.header("x-a")), (200, 10, Some("b")));
        let large = send(Target::Plain(&addr), "GET", "/", &[], Vec::new(), limits).await;
        assert!(matches!(large, Err(HttpError::TooLarge(1000))), "{large:?}");
        // Nobody listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let gone = send(Target::Plain(&closed), "GET", "/", &[], Vec::new(), limits).await;
        assert!(matches!(gone, Err(HttpError::Connect(_))), "{gone:?}");
        // A header that cannot be sent is refused before connecting.
        let bad = send(Target::Plain(&addr), "GET", "/", &[("X-Evil", "a\r\nb")], Vec::new(), limits).await;
        assert!(matches!(bad, Err(HttpError::Request(_))), "{bad:?}");
    }
}
