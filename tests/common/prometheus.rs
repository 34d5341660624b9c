//! Scraping `/metrics` over HTTP and reading it with prometheus-parse, an independent
//! parser of the text format.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::DEADLINE;

/// `GET /metrics` over a plain HTTP/1.1 connection, parsed by prometheus-parse.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read response");
        response
    };
    let response = tokio::time::timeout(DEADLINE, exchange).await.expect("scrape within the deadline");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).expect("the Prometheus text format")
}

/// The value of the sample named `metric` whose labels include `labels`.
pub fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The `+Inf` bucket of a histogram: how many observations it holds.
pub fn observations(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count),
            _ => None,
        })
}
