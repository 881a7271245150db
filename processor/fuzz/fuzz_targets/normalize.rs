//! Fuzz target: `processor::normalize` on arbitrary bytes.
//!
//! Checks what must hold for every input: no panic (and no stack overflow or runaway memory,
//! which libFuzzer reports), the same output twice, and for an accepted input a raw payload equal
//! to the input and every derived row tagged with the update's id.
//!
//! Run from `processor/fuzz` (nightly), seeding with the fixtures and the JSON dictionary:
//!   cargo +nightly fuzz run normalize corpus/normalize ../../tests/fixtures/updates \
//!       -- -dict=normalize.dict -max_len=65536

#![no_main]

use libfuzzer_sys::fuzz_target;
use processor::{Normalized, normalize};

fn src_update_ids(n: &Normalized) -> impl Iterator<Item = i64> + '_ {
    n.chats
        .iter()
        .map(|r| r.src_update_id)
        .chain(n.users.iter().map(|r| r.src_update_id))
        .chain(n.messages.iter().map(|r| r.src_update_id))
        .chain(n.message_edits.iter().map(|r| r.src_update_id))
        .chain(n.message_reactions.iter().map(|r| r.src_update_id))
        .chain(n.message_reaction_counts.iter().map(|r| r.src_update_id))
        .chain(n.chat_member_events.iter().map(|r| r.src_update_id))
        .chain(n.callback_queries.iter().map(|r| r.src_update_id))
        .chain(n.polls.iter().map(|r| r.src_update_id))
        .chain(n.poll_answers.iter().map(|r| r.src_update_id))
        .chain(n.deleted_business_messages.iter().map(|r| r.src_update_id))
        .chain(n.business_connections.iter().map(|r| r.src_update_id))
        .chain(n.inline_queries.iter().map(|r| r.src_update_id))
        .chain(n.chosen_inline_results.iter().map(|r| r.src_update_id))
}

fuzz_target!(|data: &[u8]| {
    let first = normalize(1, data);
    if let Ok(n) = &first {
        assert_eq!(n.raw.payload_bytes, data);
        assert_eq!(src_update_ids(n).count(), n.derived_row_count());
        assert!(src_update_ids(n).all(|id| id == n.raw.update_id));
        assert!(
            n.messages
                .iter()
                .all(|m| m.text.as_deref().is_none_or(|t| !t.contains('\0')))
        );
    }
    assert_eq!(first, normalize(1, data));
});
