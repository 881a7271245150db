//! Preparation: a consumed record becomes the rows it contributes or the class of its dead letter
//! (DESIGN.md §3, §6). Pure: no I/O.
//!
//! Guarantees: every record is prepared into exactly one [`Content`]; the texts stored in
//! `dead_letters.error_class` are spelled only by [`DeadLetterClass::as_str`].

use processor::Normalized;

use crate::classify::sqlstate;
use crate::record::ConsumedRecord;

/// A record made ready for writing: its rows, or the reason it becomes a dead letter.
#[derive(Debug, Clone)]
pub struct PreparedRecord {
    pub record: ConsumedRecord,
    pub content: Content,
}

/// What a record contributes to the database.
#[derive(Debug, Clone)]
pub enum Content {
    /// A normalised update.
    Update(Box<Normalized>),
    /// A record that cannot become rows: the producer's error envelope, a record without a bot
    /// id, or a processor rejection.
    Rejected {
        class: DeadLetterClass,
        text: String,
    },
}

/// Why a record is a dead letter: the `dead_letters.error_class` it is stored and counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterClass {
    /// The record is the producer's `tg-error` envelope, not an update.
    ProducerEnvelope,
    /// Neither a `tg-bot-id` header nor the record key names the bot.
    NoBotId,
    /// The processor rejected the bytes; its own class (`not_json`, `empty`, …).
    Processor(&'static str),
    /// A deterministic database error on the record alone.
    Database(DatabaseErrorClass),
    /// A redrive could not get the record's bytes back.
    RedriveUnrecoverable,
}

/// The stored class of a deterministic database error: `db_{SQLSTATE}`, or `db_client` for an
/// error raised in the client. Built only by [`DeadLetterClass::database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseErrorClass(String);

impl DeadLetterClass {
    /// The class of a deterministic database error.
    pub fn database(error: &sqlx::Error) -> Self {
        let code = sqlstate(error).unwrap_or_else(|| "client".to_owned());
        Self::Database(DatabaseErrorClass(format!("db_{code}")))
    }

    /// The text stored in `dead_letters.error_class` and used as the metrics label.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ProducerEnvelope => "producer_envelope",
            Self::NoBotId => "no_bot_id",
            Self::Processor(class) => class,
            Self::Database(DatabaseErrorClass(class)) => class,
            Self::RedriveUnrecoverable => "redrive_unrecoverable",
        }
    }
}

impl PreparedRecord {
    /// Normalises a record (pure; no I/O).
    pub fn prepare(record: ConsumedRecord) -> Self {
        let content = if let Some(reason) = record.producer_error() {
            Content::Rejected {
                class: DeadLetterClass::ProducerEnvelope,
                text: reason,
            }
        } else if let Some(bot_id) = record.bot_id() {
            match processor::normalize(bot_id, record.payload_bytes()) {
                Ok(normalized) => Content::Update(Box::new(normalized)),
                Err(rejection) => Content::Rejected {
                    class: DeadLetterClass::Processor(rejection.class()),
                    text: rejection.to_string(),
                },
            }
        } else {
            Content::Rejected {
                class: DeadLetterClass::NoBotId,
                text: format!(
                    "record has neither a {} header nor a {{bot_id}}:… key",
                    processor::wire::header::BOT_ID
                ),
            }
        };
        Self { record, content }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_classes_are_stored_as_the_texts_operators_filter_on() {
        let classes = [
            (DeadLetterClass::ProducerEnvelope, "producer_envelope"),
            (DeadLetterClass::NoBotId, "no_bot_id"),
            (DeadLetterClass::Processor("not_json"), "not_json"),
            (
                DeadLetterClass::RedriveUnrecoverable,
                "redrive_unrecoverable",
            ),
            (
                DeadLetterClass::database(&sqlx::Error::Protocol("x".into())),
                "db_client",
            ),
        ];
        for (class, stored) in classes {
            assert_eq!(class.as_str(), stored);
        }
    }
}
