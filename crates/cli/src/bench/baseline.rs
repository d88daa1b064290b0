//! The baseline servers, on the node's HTTP stack (axum over hyper, HTTP/1.1,
//! `TCP_NODELAY`; the forwarding client is hyper-util's pooled HTTP/1.1 client):
//!
//! - `null` reads the body and answers 201 (or, for a batch, one `{"key":…}`
//!   line per event) with no other work;
//! - `fanout` reads the body, posts it to its forward peers (two `null`
//!   servers: the shape of an RF=3 write) in parallel, and answers once all
//!   have answered.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;

const KEY_LINE: &str = r#"{"key":"0000000000000000000000000000000000"}"#;

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// The forwarding client: hyper-util's pooled legacy client (the leaner one, so
/// the stricter baseline; the peer transport uses the same client), or reqwest with
/// `ALLDATA_BENCH_FANOUT_CLIENT=reqwest`.
enum Forwarder {
    Reqwest(reqwest::Client),
    Hyper(Box<HyperClient>),
}

struct Baseline {
    forward: Vec<SocketAddr>,
    client: Forwarder,
}

impl Baseline {
    /// Posts `body` to every forward peer at once; true when all answered 2xx.
    async fn fan_out(&self, path: &str, body: Bytes) -> bool {
        let sends = self.forward.iter().map(|peer| {
            let url = format!("http://{peer}{path}");
            let body = body.clone();
            async move {
                match &self.client {
                    Forwarder::Reqwest(c) => match c.post(url).body(body).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    },
                    Forwarder::Hyper(c) => {
                        let Ok(request) =
                            hyper::Request::post(url).body(http_body_util::Full::new(body))
                        else {
                            return false;
                        };
                        match c.request(request).await {
                            Ok(r) => {
                                use http_body_util::BodyExt;
                                r.status().is_success() && r.into_body().collect().await.is_ok()
                            }
                            Err(_) => false,
                        }
                    }
                }
            }
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .all(|ok| ok)
    }
}

async fn event(State(b): State<Arc<Baseline>>, body: Bytes) -> Response {
    if !b.fan_out("/events", body).await {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        KEY_LINE,
    )
        .into_response()
}

async fn batch(State(b): State<Arc<Baseline>>, body: Bytes) -> Response {
    let lines = body
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    if !b.fan_out("/events/batch", body).await {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    let mut out = String::with_capacity(lines * (KEY_LINE.len() + 1));
    for _ in 0..lines {
        out.push_str(KEY_LINE);
        out.push('\n');
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        out,
    )
        .into_response()
}

/// Serves a baseline on `listen` until the process is stopped. With no
/// `forward` peers it is the `null` server, with some it is `fanout`.
pub(crate) async fn serve(listen: SocketAddr, forward: Vec<SocketAddr>) -> anyhow::Result<()> {
    let client = if std::env::var("ALLDATA_BENCH_FANOUT_CLIENT").as_deref() != Ok("reqwest") {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        Forwarder::Hyper(Box::new(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        ))
    } else {
        Forwarder::Reqwest(
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("cannot build the forwarding client")?,
        )
    };
    let state = Arc::new(Baseline { forward, client });
    let app = Router::new()
        .route("/events", post(event))
        .route("/events/batch", post(batch))
        .route("/health", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
