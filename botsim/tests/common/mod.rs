//! Shared helpers for botsim's HTTP tests: a running server with one bot, a plain HTTP client,
//! and a scriptable webhook receiver.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use botsim::{BotApi, BotApiConfig, BotInfo};
use serde_json::Value;

pub const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
pub const BOT_ID: i64 = 123_456_789;

pub struct Harness {
    pub api: BotApi,
    pub http: reqwest::Client,
}

pub async fn start() -> Harness {
    start_with(BotApiConfig::default()).await
}

pub async fn start_with(config: BotApiConfig) -> Harness {
    let api = BotApi::start(config).await.expect("botsim starts");
    api.add_bot(
        TOKEN,
        BotInfo::new(BOT_ID, "ingest_test_bot", "Ingest Test"),
    );
    Harness {
        api,
        http: reqwest::Client::new(),
    }
}

/// One HTTP answer: status and the exact body bytes.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// The `update_id`s in a successful getUpdates answer.
    pub fn update_ids(&self) -> Vec<i64> {
        let json = self.json();
        assert_eq!(json["ok"], Value::Bool(true), "not ok: {json}");
        json["result"]
            .as_array()
            .expect("result is an array")
            .iter()
            .map(|u| u["update_id"].as_i64().expect("an integer update_id"))
            .collect()
    }

    pub fn description(&self) -> String {
        self.json()["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Harness {
    pub fn url(&self, method: &str) -> String {
        self.url_for(TOKEN, method)
    }

    pub fn url_for(&self, token: &str, method: &str) -> String {
        format!("{}/bot{token}/{method}", self.api.base_url())
    }

    /// POSTs a JSON body.
    pub async fn call(&self, method: &str, params: Value) -> Answer {
        let response = self
            .http
            .post(self.url(method))
            .json(&params)
            .send()
            .await
            .expect("the request is answered");
        answer(response).await
    }

    /// GETs with a query string.
    pub async fn get(&self, method: &str, query: &str) -> Answer {
        let url = format!("{}?{query}", self.url(method));
        let response = self
            .http
            .get(url)
            .send()
            .await
            .expect("the request is answered");
        answer(response).await
    }

    pub fn push(&self, kind: &str, payload: Value) -> i64 {
        self.api
            .push_json(TOKEN, serde_json::json!({ kind: payload }))
            .expect("push succeeds")
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body").to_vec();
    Answer { status, body }
}

/// A message update payload with the given text.
pub fn message(text: &str) -> Value {
    serde_json::json!({
        "message_id": 1,
        "date": 1_735_689_600,
        "chat": {"id": 42, "type": "private", "first_name": "A"},
        "text": text,
    })
}

/// What a webhook receiver saw in one request.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A local HTTP endpoint standing in for a bot's webhook. It answers 200 unless scripted.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    _server: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    state
        .received
        .lock()
        .unwrap()
        .push(Received { headers, body });
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::from_u16(status).unwrap()
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            addr,
            state,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next answers, in order (200 once the script is used up).
    pub fn script(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were answered.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let arrived =
            testkit::eventually(Duration::from_secs(15), async || self.received().len() >= n).await;
        let received = self.received();
        assert!(
            arrived,
            "only {} of {n} webhook requests arrived",
            received.len()
        );
        received
    }
}
