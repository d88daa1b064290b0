//! Arbitrary requests never panic the node and never answer 5xx other than
//! 503/504; every error body is our JSON.

mod common;

use alldata_coordinator::{CommitLevel, EventKey};
use alldata_server_http::ApiConfig;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{node, options, send};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/events".to_owned()),
        Just("/events/batch".to_owned()),
        Just("/".to_owned()),
        Just("/health".to_owned()),
        Just("/metrics".to_owned()),
        "[ -~]{0,50}".prop_map(|k| format!("/events/{k}")),
        any::<u64>().prop_map(|ms| format!("/events/{}", EventKey::min_for_ms(ms))),
        "/[ -~]{0,30}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "(commit|from|to|limit)=[ -~]{0,30}".prop_map(|q| format!("?{q}")),
        "[ -~]{0,40}".prop_map(|q| format!("?{q}")),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[\\[\\]{}\":,0-9a-z \n\\\\]{0,200}".prop_map(String::into_bytes),
        Just(b"{\"a\":1}\n{\"b\":2}\nnot json\n".to_vec()),
    ]
}

#[test]
fn arbitrary_requests_never_fail_the_node() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = runtime.block_on(async {
        node(
            options(2, CommitLevel::Quorum),
            &["n2"],
            None,
            ApiConfig::default().with_max_event_bytes(200),
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    let strategy = (method(), path(), query(), body());
    runner
        .run(&strategy, |(method, path, query, body)| {
            let Ok(request) = Request::builder()
                .method(method.clone())
                .uri(format!("{path}{query}"))
                .body(Body::from(body))
            else {
                // Not a valid URI: nothing reaches the server.
                return Ok(());
            };
            let answer = runtime.block_on(send(&n.app, request));
            let status = answer.status;
            prop_assert!(
                !status.is_server_error()
                    || status == StatusCode::SERVICE_UNAVAILABLE
                    || status == StatusCode::GATEWAY_TIMEOUT,
                "{method} {path}{query} -> {status}"
            );
            if (status.is_client_error() || status.is_server_error()) && method != Method::HEAD {
                let json: serde_json::Value = serde_json::from_slice(&answer.body)
                    .map_err(|e| TestCaseError::fail(format!("error body not JSON: {e}")))?;
                prop_assert!(json["error"]["code"].is_string());
            }
            Ok(())
        })
        .unwrap();
    // The node still works afterwards.
    let answer = runtime.block_on(async {
        n.net.set_down("n2", false);
        send(
            &n.app,
            Request::builder()
                .method(Method::POST)
                .uri("/events")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
    });
    assert_eq!(answer.status, StatusCode::CREATED);
}
