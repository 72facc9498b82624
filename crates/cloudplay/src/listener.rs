//! The HTTP listeners: the public one (API, WHEP, web client) and the fleet's (mutual
//! TLS). Every connection must finish its request headers within `header_read_timeout`
//! and its body within the same time; connections are capped in total and per address
//! (IPv6 per /64), so no few addresses can take every descriptor; handlers see the
//! client's address (`ConnectInfo`) — behind a proxy the operator trusts
//! (`trusted_proxies`), the one the proxy forwarded, and never a forwarded one otherwise.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use cloudplay_control::ApiError;
use cloudplay_control::identity::{Fingerprint, PeerFingerprint};
pub use cloudplay_proto::cidr::Cidr;
use cloudplay_proto::ratelimit::address_key;
use tokio::net::TcpListener;

/// Most connections one address may hold open at once (fewer when the whole cap is low).
const CONNECTIONS_PER_ADDRESS: u32 = 64;

/// How a listener treats its connections.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub header_read_timeout: Duration,
    /// Connections open at once, all addresses together.
    pub max_connections: u32,
    /// Proxies whose forwarding headers name the client (`X-Forwarded-For`, `Forwarded`).
    pub trusted_proxies: Arc<[Cidr]>,
}

impl ListenerSettings {
    /// `max_connections`, bounded by this process's descriptors: half of them at most, the
    /// rest for sessions (sockets, worker pipes, displays) and the database.
    pub fn new(header_read_timeout: Duration, max_connections: u32, trusted_proxies: Vec<Cidr>) -> Self {
        let descriptors = raise_descriptor_limit();
        let max_connections = max_connections.min((descriptors / 2).clamp(16, u32::MAX as u64) as u32);
        ListenerSettings { header_read_timeout, max_connections, trusted_proxies: trusted_proxies.into() }
    }

    /// One address's share: 64, or a sixteenth of the whole when that is smaller (4 at least).
    fn per_address(&self) -> u32 {
        CONNECTIONS_PER_ADDRESS.min((self.max_connections / 16).max(4))
    }
}

/// Raises this process's soft descriptor limit to its hard one (the usual soft 1024 is a
/// default for old programs, not a decision); answers the limit in force.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// A request that came through a proxy (it carries forwarding headers, or its peer is a
/// trusted proxy): it is never taken for a caller on this machine.
#[derive(Debug, Clone, Copy)]
pub struct ViaProxy;

const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The client's address of a request from `peer`, and whether it came through a proxy.
/// Forwarding headers count only from a trusted proxy: the client is the nearest address
/// in the chain that is not itself a trusted proxy (`Forwarded` first, else
/// `X-Forwarded-For`); without a usable one, the peer.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> (IpAddr, bool) {
    let forwarded = FORWARDING_HEADERS.iter().any(|name| headers.contains_key(*name));
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return (peer, forwarded);
    }
    let chain: Vec<IpAddr> = if headers.contains_key("forwarded") {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim().eq_ignore_ascii_case("for").then(|| parse_node(value))?
            })
            .collect()
    } else {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse_node)
            .collect()
    };
    let client = chain.into_iter().rev().find(|ip| !is_trusted(*ip)).unwrap_or(peer);
    (client, true)
}

/// An address of a forwarding chain: `1.2.3.4`, `"[2001:db8::1]:443"`, `1.2.3.4:80`.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')?.split(']').next()?.parse().ok()
}

/// Open connections: all together and per address.
#[derive(Default)]
struct ConnectionCounts {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
}

/// One open connection; counted while it lives.
struct ConnectionSlot(Arc<Mutex<ConnectionCounts>>, Option<IpAddr>);

impl ConnectionCounts {
    /// A slot for a connection from `peer`, if there is room. A trusted proxy carries
    /// many clients: only the total bounds it.
    fn open(
        counts: &Arc<Mutex<ConnectionCounts>>,
        peer: IpAddr,
        settings: &ListenerSettings,
    ) -> Option<ConnectionSlot> {
        let mut map = counts.lock().ok()?;
        if map.total >= settings.max_connections {
            return None;
        }
        let key = if settings.trusted_proxies.iter().any(|range| range.contains(peer)) {
            None
        } else {
            let key = address_key(peer.to_canonical());
            let count = map.per_address.entry(key).or_insert(0);
            if *count >= settings.per_address() {
                return None;
            }
            *count += 1;
            Some(key)
        };
        map.total += 1;
        Some(ConnectionSlot(counts.clone(), key))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Ok(mut map) = self.0.lock() else { return };
        map.total -= 1;
        if let Some(key) = self.1
            && let Some(count) = map.per_address.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                map.per_address.remove(&key);
            }
        }
    }
}

/// Serves `router` on the public listener until `shutdown` completes.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve(listener, router, None, settings, shutdown).await
}

/// As [`serve_http`], over TLS with `tls` (a fleet listener: mutual TLS); handlers also
/// see the fingerprint of the client's certificate ([`PeerFingerprint`]). Fleet members
/// connect directly: no proxy is trusted there.
pub async fn serve_fleet(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let settings = ListenerSettings { trusted_proxies: Arc::from([]), ..settings };
    serve(listener, router, Some(acceptor), settings, shutdown).await
}

async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    settings: ListenerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
    let header_read_timeout = settings.header_read_timeout;
    let router = router.layer(axum::middleware::from_fn_with_state(header_read_timeout, body_deadline));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Some(slot) = ConnectionCounts::open(&counts, peer.ip(), &settings) else {
            tracing::debug!(%peer, "connection refused: too many open");
            continue; // dropping the stream closes it
        };
        let (router, tls, trusted) = (router.clone(), tls.clone(), settings.trusted_proxies.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = tls else {
                return serve_connection(stream, peer, None, trusted, router, header_read_timeout).await;
            };
            // The handshake gets the same time as the headers would.
            match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let fingerprint = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|certificate| Fingerprint::of(certificate.as_ref()));
                    serve_connection(stream, peer, fingerprint, trusted, router, header_read_timeout).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// One HTTP/1.1 connection, its requests tagged with the client's address (see
/// [`client_address`]) and the peer's certificate.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    fingerprint: Option<Fingerprint>,
    trusted: Arc<[Cidr]>,
    router: Router,
    header_read_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            let (client, via_proxy) = client_address(peer.ip(), request.headers(), &trusted);
            request.extensions_mut().insert(axum::extract::ConnectInfo(SocketAddr::new(client, peer.port())));
            if via_proxy {
                request.extensions_mut().insert(ViaProxy);
            }
            if let Some(fingerprint) = fingerprint {
                request.extensions_mut().insert(PeerFingerprint(fingerprint));
            }
            request
        })
        .service(router);
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(e) = connection.with_upgrades().await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The most a request body may be (the routes themselves allow far less: 16 KiB of JSON,
/// 64 KiB of SDP).
const MAX_BODY: usize = 1 << 20;

/// Reads the whole body within `limit` before the handler runs, so a client that stalls
/// halfway through its body gets `408` instead of holding the connection and a handler.
async fn body_deadline(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        let message = format!("the body must be at most {MAX_BODY} bytes");
        return ApiError(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).into_response();
    }
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
        }
        Ok(Err(e)) => ApiError::bad_request(format!("unreadable body: {e}")).into_response(),
        Err(_) => {
            let message = format!("the request body did not arrive within {} s", limit.as_secs());
            ApiError(StatusCode::REQUEST_TIMEOUT, "request_timeout", message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let trusted = cidrs(&["127.0.0.1/32", "10.0.0.0/8"]);
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        assert_eq!(client_address(proxy, &forwarded, &trusted), ("203.0.113.9".parse().unwrap(), true));
        // Not trusted: the header is ignored, but the request is still marked as proxied.
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_address(stranger, &forwarded, &trusted), (stranger, true));
        assert_eq!(client_address(proxy, &forwarded, &[]), (proxy, true), "no trusted proxies: the peer");
        // A client's own forged entry sits left of what the proxy saw: the nearest counts.
        let forged = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(client_address(proxy, &forged, &trusted).0, "203.0.113.9".parse::<IpAddr>().unwrap());
        let standard = headers(&[("forwarded", "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"")]);
        assert_eq!(client_address(proxy, &standard, &trusted).0, "2001:db8::1".parse::<IpAddr>().unwrap());
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(client_address(proxy, &garbage, &trusted), (proxy, true));
        assert_eq!(
            client_address(proxy, &HeaderMap::new(), &trusted),
            (proxy, true),
            "a trusted peer is a proxy"
        );
        assert_eq!(client_address(stranger, &HeaderMap::new(), &trusted), (stranger, false));
    }

    fn settings(max_connections: u32, trusted: &[&str]) -> ListenerSettings {
        ListenerSettings {
            header_read_timeout: Duration::from_secs(1),
            max_connections,
            trusted_proxies: cidrs(trusted).into(),
        }
    }

    #[test]
    fn connections_are_capped_in_total_and_per_address() {
        let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
        let settings = settings(128, &["127.0.0.1"]);
        assert_eq!(settings.per_address(), 8, "a sixteenth of the whole");
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(ConnectionCounts::open(&counts, ip("192.0.2.1"), &settings).unwrap());
        }
        assert!(ConnectionCounts::open(&counts, ip("192.0.2.1"), &settings).is_none(), "its share is used");
        assert!(
            ConnectionCounts::open(&counts, ip("192.0.2.2"), &settings).is_some(),
            "another address gets in"
        );
        // IPv6: one /64 is one address.
        for i in 0..8 {
            held.push(ConnectionCounts::open(&counts, ip(&format!("2001:db8::{i}")), &settings).unwrap());
        }
        assert!(ConnectionCounts::open(&counts, ip("2001:db8::ffff"), &settings).is_none());
        // A trusted proxy carries many clients: only the total holds it.
        while let Some(slot) = ConnectionCounts::open(&counts, ip("127.0.0.1"), &settings) {
            held.push(slot);
        }
        assert_eq!(counts.lock().unwrap().total, 128);
        assert!(
            ConnectionCounts::open(&counts, ip("198.51.100.1"), &settings).is_none(),
            "the total is full"
        );
        held.truncate(100);
        assert!(
            ConnectionCounts::open(&counts, ip("198.51.100.1"), &settings).is_some(),
            "closed ones free room"
        );
        drop(held);
        let left = counts.lock().unwrap();
        assert_eq!((left.total, left.per_address.len()), (0, 0), "everything is given back");
    }
}
