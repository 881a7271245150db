//! Telegram faults injected by the simulated Bot API: each has the behaviour the producer
//! promises (exact 429 waits, 409 episodes, capped backoff, malformed bodies and stalls retried),
//! and none loses or blocks an update.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use botsim::Fault;
use common::*;
use testkit::eventually;

/// Starts a producer, waits for its first getUpdates, queues `faults` for the following
/// getUpdates calls, pushes one update and waits until Kafka has it and Telegram confirmed it.
async fn run_through_faults(faults: Vec<Fault>) -> (botsim::BotApi, Vec<botsim::RequestRecord>) {
    let api = start_botsim(1).await;
    let (broker, topic) = start_broker().await;
    let producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    assert!(
        eventually(Duration::from_secs(15), async || !get_updates_requests(
            &api
        )
        .is_empty())
        .await
    );
    for fault in faults {
        api.inject_on(TOKENS[0], "getUpdates", fault).unwrap();
    }
    let id = api
        .push_kind(
            TOKENS[0],
            "message",
            br#"{"message_id":1,"chat":{"id":3},"text":"hi"}"#,
        )
        .unwrap();
    let records = read_topic(&broker, &topic, 1, Duration::from_secs(40)).await;
    assert_eq!(records.len(), 1, "the update never reached Kafka");
    assert!(
        eventually(Duration::from_secs(20), async || api
            .confirmed_offset(TOKENS[0])
            == Some(id + 1))
        .await,
        "never confirmed: {:?}",
        api.confirmed_offset(TOKENS[0])
    );
    // The confirming call must also have been answered, so the producer saw the episode end.
    assert!(
        eventually(Duration::from_secs(10), async || {
            get_updates_requests(&api)
                .last()
                .is_some_and(|r| r.status == 200 && r.offset == Some(id + 1))
        })
        .await
    );
    producer.stop().await.unwrap();
    let requests = get_updates_requests(&api);
    (api, requests)
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// The requests that consumed a fault, each with the arrival of the request after it.
fn faulted_with_next(
    requests: &[botsim::RequestRecord],
) -> Vec<(botsim::RequestRecord, SystemTime)> {
    requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.fault.is_some() && !matches!(r.fault, Some(Fault::Stall(_))))
        .filter_map(|(i, r)| requests.get(i + 1).map(|next| (r.clone(), next.at)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_exactly_retry_after_before_the_next_call_broker() {
    let (_api, requests) =
        run_through_faults(vec![Fault::TooManyRequests { retry_after: 2 }]).await;
    let pairs = faulted_with_next(&requests);
    assert_eq!(pairs.len(), 1, "{requests:#?}");
    let (limited, next_at) = &pairs[0];
    assert_eq!(limited.status, 429);
    let answered = limited.at + limited.duration;
    let waited = since(*next_at, answered);
    assert!(
        waited >= Duration::from_secs(2),
        "the next getUpdates came {waited:?} after the 429, before retry_after"
    );
    assert!(
        waited < Duration::from_millis(2_800),
        "waited {waited:?}: retry_after is 2 s, not a backoff on top of it"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_409_episode_backs_off_and_is_logged_once_broker() {
    let (logs, _guard) = capture_thread_logs(tracing::Level::TRACE);
    let (_api, requests) = run_through_faults(vec![Fault::Conflict; 4]).await;
    let conflicts: Vec<_> = requests.iter().filter(|r| r.status == 409).collect();
    assert_eq!(conflicts.len(), 4, "{requests:#?}");
    // Backoff: 50, 100, 200, 400 ms after each conflict.
    let pairs = faulted_with_next(&requests);
    let gaps: Vec<Duration> = pairs
        .iter()
        .map(|(r, next)| since(*next, r.at + r.duration))
        .collect();
    assert!(gaps[0] >= Duration::from_millis(50), "{gaps:?}");
    assert!(gaps[3] >= Duration::from_millis(400), "{gaps:?}");
    assert!(gaps[3] > gaps[0], "the backoff did not grow: {gaps:?}");

    let text = logs.text();
    let warned = text.matches("getUpdates conflict (409)").count();
    assert_eq!(warned, 1, "one warning per episode, got {warned}:\n{text}");
    assert_eq!(text.matches("conflict resolved").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_exponentially_up_to_the_cap_broker() {
    let (_api, requests) = run_through_faults(vec![
        Fault::ServerError(502),
        Fault::ServerError(500),
        Fault::ServerError(503),
        Fault::ServerError(502),
        Fault::ServerError(500),
    ])
    .await;
    let pairs = faulted_with_next(&requests);
    assert_eq!(pairs.len(), 5, "{requests:#?}");
    let gaps: Vec<u128> = pairs
        .iter()
        .map(|(r, next)| since(*next, r.at + r.duration).as_millis())
        .collect();
    // 50, 100, 200, 400, 400 (capped) ms, plus scheduling noise.
    let expected = [50, 100, 200, 400, 400];
    for (gap, floor) in gaps.iter().zip(expected) {
        assert!(
            *gap >= floor,
            "gaps {gaps:?} below the backoff {expected:?}"
        );
        assert!(
            *gap < floor + 300,
            "gaps {gaps:?} far above the backoff {expected:?}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_body_is_logged_and_retried_broker() {
    let (logs, _guard) = capture_thread_logs(tracing::Level::TRACE);
    let (_api, requests) =
        run_through_faults(vec![Fault::MalformedBody, Fault::MalformedBody]).await;
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.fault == Some(Fault::MalformedBody))
            .count(),
        2
    );
    let text = logs.text();
    assert_eq!(
        text.matches("malformed response (HTTP 200)").count(),
        2,
        "each malformed body is logged:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_getupdates_times_out_and_polling_resumes_broker() {
    let started = std::time::Instant::now();
    // The client timeout is 3 s; the stall would hold the request for 20 s.
    let (_api, _requests) = run_through_faults(vec![Fault::Stall(Duration::from_secs(20))]).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stall was waited out ({:?}) instead of timing out",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_startup_error_naming_it_broker() {
    let api = start_botsim(1).await;
    let (broker, _topic) = start_broker().await;
    let missing = broker.unique_topic("absent");
    let mut producer = RunningProducer::spawn(polling_config(&api, &broker, &missing, 1));
    let error = producer.join(Duration::from_secs(30)).await.unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains(&missing), "{text}");
    assert!(text.contains("does not exist"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_api_that_omits_optional_getme_fields_is_served_broker() {
    let api = start_botsim(1).await;
    api.set_minimal_get_me(true);
    let (broker, topic) = start_broker().await;
    let id = push_message(&api, 1, 3, "hi");
    let mut producer = RunningProducer::spawn(polling_config(&api, &broker, &topic, 1));
    let confirmed = producer
        .serves_until(Duration::from_secs(30), async || {
            api.confirmed_offset(TOKENS[0]) == Some(id + 1)
        })
        .await;
    assert!(confirmed, "never confirmed");
    producer.stop().await.unwrap();
}

/// Starts a producer for one bot whose getMe consumes `faults` (one a call), and returns every
/// reason its readiness unit gave meanwhile, once the bot served an update after them: startup
/// failures of one bot are retried without end, never fatal.
async fn getme_failure_reasons(faults: Vec<Fault>) -> Vec<String> {
    let api = start_botsim(1).await;
    let count = faults.len();
    for fault in faults {
        api.inject_on(TOKENS[0], "getMe", fault).unwrap();
    }
    let (broker, topic) = start_broker().await;
    let mut config = polling_config(&api, &broker, &topic, 1);
    config.backoff.max = Duration::from_millis(100);
    let readiness = std::sync::Arc::new(RecordingReadiness::default());
    let mut producer = RunningProducer::spawn_with(config, readiness.clone());
    let id = push_message(&api, 1, 3, "after the faults");
    let confirmed = producer
        .serves_until(Duration::from_secs(30), async || {
            api.confirmed_offset(TOKENS[0]) == Some(id + 1)
        })
        .await;
    assert!(confirmed, "never served after {count} getMe failures");
    producer.stop().await.unwrap();
    readiness.reasons(&producer::readiness::Unit::bot(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getme_failures_say_what_was_wrong_with_the_real_http_status_broker() {
    let malformed = getme_failure_reasons(vec![Fault::MalformedBody; 5]).await;
    assert!(
        malformed
            .iter()
            .any(|r| r.starts_with("getMe failed: malformed response (HTTP 200): ")),
        "{malformed:?}"
    );
    let bad_gateway = getme_failure_reasons(vec![Fault::ServerError(502); 6]).await;
    assert!(
        bad_gateway
            .iter()
            .any(|r| r.starts_with("getMe failed: server error 502")),
        "{bad_gateway:?}"
    );
}
