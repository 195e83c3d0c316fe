//! loadgen's HTTP client: each worker keeps one HTTP/1.1 connection open
//! (hyper's connection API) and drives it from its own task.
//!
//! loadgen shares the machine with what it measures, so what it spends a
//! request is taken from the services. reqwest's pooled client, which it
//! used before, parses the URL, looks up the pool and hands every request
//! to a connection task and its answer back (docs/benchmarks.md has the
//! CPU an order of each).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where requests go: `host:port` and the path, from a URL given once.
#[derive(Clone, Debug)]
pub struct Target {
    authority: String,
    host: HeaderValue,
    path: Uri,
}

impl Target {
    /// `url` is `http://host[:port]/path[?query]`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: Uri = url.parse()?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "loadgen speaks plain HTTP; {url} is not http://"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{url} names no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        Ok(Target {
            authority: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(authority.as_str())?,
            path,
        })
    }
}

/// Why a request got no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Connection,
}

/// One connection, opened when first needed and again after a failure.
pub struct Client {
    target: Target,
    timeout: Duration,
    open: Option<Open>,
}

struct Open {
    sender: SendRequest<Full<Bytes>>,
    connection: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Client {
        Client {
            target,
            timeout,
            open: None,
        }
    }

    /// POSTs `body` as JSON (or GETs, with no body) and reads the whole
    /// answer, as a client would; the status it came with.
    pub async fn send(&mut self, body: Option<Bytes>) -> Result<StatusCode, Failure> {
        let answer = tokio::time::timeout(self.timeout, self.exchange(body)).await;
        let failure = match answer {
            Ok(Ok(status)) => return Ok(status),
            Ok(Err(_)) => Failure::Connection,
            Err(_) => Failure::Timeout,
        };
        // A connection with a request cut short carries nothing more.
        self.open = None;
        Err(failure)
    }

    async fn exchange(&mut self, body: Option<Bytes>) -> anyhow::Result<StatusCode> {
        // A connection the server closed while idle: a new one, before the
        // request is sent (so a POST is never sent twice). The connection
        // reads the close only when polled, and it is not polled between
        // requests.
        if let Some(open) = &mut self.open {
            if open.connection.as_mut().now_or_never().is_some() || open.sender.is_closed() {
                self.open = None;
            }
        }
        if self.open.is_none() {
            let stream = TcpStream::connect(&self.target.authority).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            self.open = Some(Open {
                sender,
                connection: Box::pin(connection),
            });
        }
        let Open { sender, connection } = self.open.as_mut().expect("opened above");
        let mut request = Request::builder()
            .uri(self.target.path.clone())
            .header(HOST, self.target.host.clone());
        request = match &body {
            Some(_) => request
                .method(Method::POST)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json")),
            None => request.method(Method::GET),
        };
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let exchange = async {
            sender.ready().await?;
            let answer = sender.send_request(request).await?;
            let status = answer.status();
            answer.into_body().collect().await?;
            anyhow::Ok(status)
        };
        tokio::pin!(exchange);
        // The connection makes progress only while polled: here, beside
        // the exchange, instead of in a task of its own.
        tokio::select! {
            biased;
            status = &mut exchange => status,
            ended = connection.as_mut() => {
                ended?;
                // A server that closes after its answer: the answer is in
                // hand by the time the connection has ended.
                exchange
                    .now_or_never()
                    .unwrap_or_else(|| anyhow::bail!("the server closed the connection"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const ANSWER: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";

    /// Reads one request, its head and the body its content-length gives.
    async fn read_request(socket: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed mid-request");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse().unwrap());
                if body.len() >= length {
                    return text;
                }
            }
        }
    }

    async fn listener() -> (TcpListener, Target) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/orders", listener.local_addr().unwrap());
        (listener, Target::parse(&url).unwrap())
    }

    #[test]
    fn a_url_becomes_an_address_a_host_and_a_path() {
        let t = Target::parse("http://127.0.0.1:3000/orders").unwrap();
        assert_eq!(t.authority, "127.0.0.1:3000");
        assert_eq!(t.host, "127.0.0.1:3000");
        assert_eq!(t.path, "/orders");
        let t = Target::parse("http://localhost/orders?limit=50").unwrap();
        assert_eq!(t.authority, "localhost:80");
        assert_eq!(t.host, "localhost");
        assert_eq!(t.path, "/orders?limit=50");
        assert!(Target::parse("https://example.com/orders").is_err());
        assert!(Target::parse("/orders").is_err());
    }

    #[tokio::test]
    async fn requests_share_a_connection_and_a_closed_one_is_replaced_before_sending() {
        let (listener, target) = listener().await;
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            // The first connection answers two requests, then closes.
            let (mut socket, _) = listener.accept().await.unwrap();
            for _ in 0..2 {
                seen.push(read_request(&mut socket).await);
                socket.write_all(ANSWER).await.unwrap();
            }
            drop(socket);
            // The second answers the third.
            let (mut socket, _) = listener.accept().await.unwrap();
            seen.push(read_request(&mut socket).await);
            socket.write_all(ANSWER).await.unwrap();
            seen
        });
        let host = target.host.clone();
        let mut client = Client::new(target, Duration::from_secs(5));
        for _ in 0..2 {
            let status = client.send(Some(Bytes::from_static(b"{\"a\":1}"))).await;
            assert_eq!(status, Ok(StatusCode::ACCEPTED));
        }
        // Let the close arrive, as it would while a worker waits for its
        // next arrival.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(client.send(None).await, Ok(StatusCode::ACCEPTED));
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("POST /orders HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].contains("content-type: application/json"),
            "{}",
            seen[0]
        );
        assert!(seen[0].ends_with("\r\n\r\n{\"a\":1}"), "{}", seen[0]);
        assert!(
            seen[2].starts_with("GET /orders HTTP/1.1\r\n"),
            "{}",
            seen[2]
        );
        let host = format!("host: {}\r\n", host.to_str().unwrap());
        assert!(seen.iter().all(|r| r.contains(&host)), "{seen:?}");
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout_and_no_listener_a_connection_failure() {
        let (listener, target) = listener().await;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            // Never answers; keeps the connection open until dropped.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut client = Client::new(target.clone(), Duration::from_millis(200));
        assert_eq!(client.send(Some(Bytes::new())).await, Err(Failure::Timeout));
        server.abort();
        let _ = server.await;
        // The port is free now: nothing listens there.
        assert_eq!(client.send(None).await, Err(Failure::Connection));
    }
}
