//! The units the producer reports to its host's readiness registry (the root binary's
//! `/readyz`), through the workspace's one readiness contract ([`component::Readiness`]).
//!
//! The producer reports [`KAFKA_CHECK`] (the topic exists and the broker answers) and one unit
//! per bot, [`Unit::bot`]`(n)` (`bot #n`, by position, never by token). Every unit is reported not
//! ready before startup begins, so a probe never sees "ready" for a producer that has not proven
//! anything yet. Each bot reports only itself, so one bot's failure can no longer be overwritten
//! by another bot's success.
//!
//! What a bot unit means depends on the intake mode:
//! - polling: ready while its getUpdates answers; not ready, with the reason, while its token is
//!   rejected or its calls fail;
//! - webhook: ready once its route is served (from startup: the bot id comes from the token),
//!   with a detail naming any Bot API call of that bot that fails (getMe, setWebhook,
//!   getWebhookInfo). Readiness gates traffic to the whole pod, so one bot's failing Bot API calls
//!   must not take every other bot's webhook out of service; `tgingest_bot_up{bot}` shows them.

pub use component::{NoReadiness, Readiness, Unit};

/// The topic exists and the broker answers (the last publish succeeded, or a probe did since).
pub const KAFKA_CHECK: &Unit = &Unit::fixed("kafka");
