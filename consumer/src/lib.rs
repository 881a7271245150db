//! Kafka consumer group writing Telegram updates to PostgreSQL with exactly-once effect: not built yet.
