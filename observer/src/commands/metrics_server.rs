//! `watch --metrics ADDR`: serves the metrics over HTTP/1.1 for Prometheus to scrape.
//! One request per connection, answered from a snapshot rendered under the lock; a
//! client that sends nothing for a few seconds is dropped so it cannot pin a task.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::output::metrics::{self, SharedMetrics};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A scrape request is one short line and a few headers.
const MAX_REQUEST_BYTES: usize = 8192;
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds before the programs load, so that a busy or bad address fails `watch` at once.
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot listen on {address} for --metrics"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers scrapes until the runtime stops; runs on the caller's runtime.
pub fn spawn(listener: std::net::TcpListener, metrics: SharedMetrics) -> Result<()> {
    let listener = TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, metrics.clone()));
                }
                // Out of descriptors, or the like: try again shortly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok(())
}

async fn answer(mut stream: TcpStream, metrics: SharedMetrics) {
    let Ok(Some(request_line)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .unwrap_or(Ok(None))
    else {
        return;
    };
    let (status, content_type, body) = respond(&request_line, &metrics);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let is_head = request_line.starts_with("HEAD ");
    let _ = stream.write_all(head.as_bytes()).await;
    if !is_head {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line ending the request head; returns its first line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().map(str::to_string))
}

/// Status, content type and body for a request line such as `GET /metrics HTTP/1.1`.
fn respond(request_line: &str, metrics: &SharedMetrics) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    }
    // Prometheus may add query parameters; they select nothing here.
    match target.split('?').next().unwrap_or("") {
        "/metrics" => ("200 OK", CONTENT_TYPE, metrics::lock(metrics).render()),
        "/" => (
            "200 OK",
            "text/html",
            "<html><body><a href=\"/metrics\">observer metrics</a></body></html>\n".into(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::metrics::Metrics;

    #[test]
    fn serves_metrics_and_refuses_everything_else() {
        let metrics = Metrics::shared();
        let (status, content_type, body) = respond("GET /metrics HTTP/1.1", &metrics);
        assert_eq!((status, content_type), ("200 OK", CONTENT_TYPE));
        assert!(body.contains("observer_lost_events_total 0"), "{body}");
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.1", &metrics).0, "200 OK");
        assert_eq!(respond("GET /nope HTTP/1.1", &metrics).0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1", &metrics).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &metrics).0, "405 Method Not Allowed");
    }
}
