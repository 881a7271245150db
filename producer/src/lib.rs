//! Telegram Bot API intake (long polling, webhook) publishing updates to Kafka: not built yet.
