//! The benchmark workload: a seeded stream of realistic Bot API updates for one bot.
//!
//! `botsim::traffic::TrafficGenerator` simulates one small world whose chats all get the same
//! share of traffic and whose texts come from a short corpus. Its shape cannot be tuned, so this
//! module wraps several of them ("communities") and post-processes their output:
//! - **skewed chat sizes**: each update comes from community `i` with weight `1/(i+1)^s` (Zipf),
//!   so a few chats carry most of the traffic and many are quiet;
//! - **lognormal text lengths**: a message's text is padded with multi-script words to a length
//!   drawn from a lognormal distribution; the draw is seeded by (chat id, message id), so a message
//!   and its edits carry the same padding (an edit is still "the same text plus something");
//! - **1% duplicate deliveries**: an earlier update's exact bytes are emitted again;
//! - update ids are restamped so they increase by one across all communities (one bot's queue).
//!
//! Media (~10%: photos, documents, channel photos), edits, replies, reactions, joins, polls and
//! callbacks come from the generator itself. Guarantees: the same config gives the same bytes;
//! every update is a JSON object with an integer `update_id`; a padded update is re-serialised
//! (its keys then appear in sorted order, which the Bot API's parsers never depend on).

use std::collections::VecDeque;

use botsim::traffic::{TrafficConfig, TrafficGenerator};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::LogNormal;
use serde_json::Value;

/// The bot every benchmark update is addressed to.
pub const BOT_ID: i64 = 7_000_000_001;

/// Shape of the stream.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Seeds every generator and every post-processing draw.
    pub seed: u64,
    /// Number of independent communities (each: 2–4 groups, sometimes a channel, private chats).
    pub communities: usize,
    /// Zipf exponent of the community weights (0 = uniform).
    pub zipf_s: f64,
    /// Median text length in characters.
    pub text_median_chars: f64,
    /// Sigma of ln(text length).
    pub text_sigma: f64,
    /// Updates per thousand that are a re-delivery of an earlier update's exact bytes.
    pub duplicate_per_mille: u32,
    /// The first update id.
    pub first_update_id: i64,
    /// How the updates spread over the update kinds.
    pub mix: Mix,
}

/// How a stream spreads over the update kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// As the communities emit them: mostly messages (about 60%), then reactions, edits, poll
    /// answers, member changes, callbacks, channel posts…
    #[default]
    Realistic,
    /// Every kind the generator emits in turn, the same count of each ([`EVEN_KINDS`]); the
    /// communities' updates of a kind not yet due wait (at most [`EVEN_STASH`] per kind, the rest
    /// are skipped, so some edits and answers refer to messages and polls never emitted).
    Even,
}

/// The kinds an [`Mix::Even`] stream rotates through: every kind the traffic generator emits,
/// its not-yet-known kind included.
pub const EVEN_KINDS: &[&str] = &[
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "message_reaction",
    "message_reaction_count",
    "chat_member",
    "poll",
    "poll_answer",
    "callback_query",
    botsim::traffic::UNKNOWN_KIND,
];

/// Updates of one kind an even stream keeps waiting for their turn.
const EVEN_STASH: usize = 4096;

/// Draws without meeting a kind after which an even stream skips that kind's turn.
const EVEN_GIVE_UP: usize = 1_000_000;

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            communities: 64,
            zipf_s: 0.8,
            text_median_chars: 60.0,
            text_sigma: 1.0,
            duplicate_per_mille: 10,
            first_update_id: 700_000_000,
            mix: Mix::Realistic,
        }
    }
}

/// Padding words: Latin, Cyrillic, CJK, Arabic, emoji (multi-byte UTF-8, surrogate pairs in UTF-16).
const WORDS: &[&str] = &[
    "the",
    "release",
    "tomorrow",
    "meeting",
    "привет",
    "спасибо",
    "завтра",
    "今日は",
    "ありがとう",
    "会議",
    "مرحبا",
    "شكرا",
    "🚀",
    "👍",
    "😂",
    "🎉",
    "ok",
    "deploy",
    "logs",
    "kafka",
    "postgres",
    "Grüße",
    "café",
    "naïve",
    "😅",
    "👀",
    "🔥",
    "tak",
    "dzięki",
    "γεια",
    "σου",
];

/// A seeded, endless stream of update bytes.
pub struct Workload {
    communities: Vec<TrafficGenerator>,
    pick: WeightedIndex<f64>,
    rng: ChaCha8Rng,
    text_length: LogNormal<f64>,
    duplicate_per_mille: u32,
    next_update_id: i64,
    recent: VecDeque<Vec<u8>>,
    seed: u64,
    mix: Mix,
    /// Even mix: the next kind's index in [`EVEN_KINDS`], and the updates waiting per kind.
    turn: usize,
    stash: std::collections::HashMap<String, VecDeque<Vec<u8>>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("communities", &self.communities.len())
            .field("next_update_id", &self.next_update_id)
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// A stream for `config`.
    pub fn new(config: &WorkloadConfig) -> anyhow::Result<Self> {
        let count = config.communities.max(1);
        let communities = (0..count)
            .map(|i| {
                let traffic = TrafficConfig {
                    groups: 2 + i % 3,
                    users: 30 + (i * 7) % 50,
                    private_chats: 2 + i % 4,
                    channel: i % 3 == 0,
                    mean_gap_secs: 2,
                    ..TrafficConfig::default()
                };
                TrafficGenerator::new(
                    config.seed.wrapping_mul(1000).wrapping_add(i as u64),
                    traffic,
                )
            })
            .collect();
        let weights: Vec<f64> = (0..count)
            .map(|i| 1.0 / ((i + 1) as f64).powf(config.zipf_s))
            .collect();
        Ok(Self {
            communities,
            pick: WeightedIndex::new(weights)?,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            text_length: LogNormal::new(config.text_median_chars.ln(), config.text_sigma)?,
            duplicate_per_mille: config.duplicate_per_mille,
            next_update_id: config.first_update_id,
            recent: VecDeque::with_capacity(1000),
            seed: config.seed,
            mix: config.mix,
            turn: 0,
            stash: std::collections::HashMap::new(),
        })
    }

    /// The next update's bytes.
    pub fn next_update(&mut self) -> Vec<u8> {
        if !self.recent.is_empty() && self.rng.random_range(0..1000) < self.duplicate_per_mille {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        let raw = match self.mix {
            Mix::Realistic => self.draw(),
            Mix::Even => self.draw_even(),
        };
        let id = self.next_update_id;
        self.next_update_id += 1;
        let update = self.pad_text(&raw, id).unwrap_or_else(|| restamp(&raw, id));
        if self.recent.len() == 1000 {
            self.recent.pop_front();
        }
        self.recent.push_back(update.clone());
        update
    }

    /// The next update of a community picked by weight.
    fn draw(&mut self) -> Vec<u8> {
        let community = self.pick.sample(&mut self.rng);
        self.communities[community].next_update()
    }

    /// The next update of the kind whose turn it is (skipping a kind the communities stopped
    /// emitting).
    fn draw_even(&mut self) -> Vec<u8> {
        loop {
            let want = EVEN_KINDS[self.turn % EVEN_KINDS.len()];
            self.turn += 1;
            if let Some(raw) = self.stash.get_mut(want).and_then(VecDeque::pop_front) {
                return raw;
            }
            for _ in 0..EVEN_GIVE_UP {
                let raw = self.draw();
                let kind = kind_of(&raw).unwrap_or_default();
                if kind == want {
                    return raw;
                }
                let waiting = self.stash.entry(kind).or_default();
                if waiting.len() < EVEN_STASH {
                    waiting.push_back(raw);
                }
            }
        }
    }

    /// `n` updates.
    pub fn batch(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.next_update()).collect()
    }

    /// The update re-serialised with its text padded to a lognormal length and `update_id` set to
    /// `id`; `None` when it carries no text or the drawn length is not longer than the text.
    fn pad_text(&self, raw: &[u8], id: i64) -> Option<Vec<u8>> {
        let mut update: Value = serde_json::from_slice(raw).ok()?;
        let object = update.as_object_mut()?;
        let kind = [
            "message",
            "edited_message",
            "channel_post",
            "edited_channel_post",
        ]
        .into_iter()
        .find(|k| object.contains_key(*k))?;
        let message = object.get_mut(kind)?.as_object_mut()?;
        let chat_id = message.get("chat")?.get("id")?.as_i64()?;
        let message_id = message.get("message_id")?.as_i64()?;
        let text = message.get("text")?.as_str()?;
        let mut draw = ChaCha8Rng::seed_from_u64(
            self.seed
                ^ (chat_id as u64).rotate_left(17)
                ^ (message_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        // Telegram caps a message at 4096 characters.
        let target = (self.text_length.sample(&mut draw) as usize).min(4096);
        let mut padded = text.to_owned();
        let mut chars = padded.chars().count();
        if chars >= target {
            return None;
        }
        while chars < target {
            let word = WORDS[draw.random_range(0..WORDS.len())];
            padded.push(' ');
            padded.push_str(word);
            chars += 1 + word.chars().count();
        }
        message.insert("text".to_owned(), Value::String(padded));
        object.insert("update_id".to_owned(), Value::from(id));
        serde_json::to_vec(&update).ok()
    }
}

/// The update's kind: its one key besides `update_id`.
pub fn kind_of(raw: &[u8]) -> Option<String> {
    let update: serde_json::Map<String, Value> = serde_json::from_slice(raw).ok()?;
    update
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k != "update_id")
}

/// Replaces the leading `{"update_id":N` of generator output with `id`, keeping every other byte.
fn restamp(raw: &[u8], id: i64) -> Vec<u8> {
    const PREFIX: &[u8] = b"{\"update_id\":";
    let Some(rest) = raw.strip_prefix(PREFIX) else {
        return raw.to_vec();
    };
    let digits = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    let mut out = Vec::with_capacity(raw.len() + 4);
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(&rest[digits..]);
    out
}

/// Counts describing a sample of the stream, printed with every benchmark so readers can judge
/// its realism.
#[derive(Debug, Default)]
pub struct WorkloadProfile {
    pub updates: usize,
    pub bytes: usize,
    pub media: usize,
    pub edits: usize,
    pub reactions: usize,
    pub duplicates: usize,
    pub text_chars_p50: usize,
    pub text_chars_p99: usize,
    pub top_chat_share: f64,
    pub chats: usize,
}

impl WorkloadProfile {
    /// Profiles `updates`.
    pub fn of(updates: &[Vec<u8>]) -> Self {
        let mut profile = Self {
            updates: updates.len(),
            ..Self::default()
        };
        let mut seen = std::collections::HashSet::new();
        let mut chats: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
        let mut lengths = Vec::new();
        for raw in updates {
            profile.bytes += raw.len();
            if !seen.insert(raw.as_slice()) {
                profile.duplicates += 1;
                continue;
            }
            let Ok(update) = serde_json::from_slice::<Value>(raw) else {
                continue;
            };
            let Some(object) = update.as_object() else {
                continue;
            };
            if object.contains_key("edited_message") || object.contains_key("edited_channel_post") {
                profile.edits += 1;
            }
            if object.contains_key("message_reaction")
                || object.contains_key("message_reaction_count")
            {
                profile.reactions += 1;
            }
            for (_, body) in object.iter().filter(|(k, _)| *k != "update_id") {
                if body.get("photo").is_some() || body.get("document").is_some() {
                    profile.media += 1;
                }
                if let Some(text) = body.get("text").and_then(Value::as_str) {
                    lengths.push(text.chars().count());
                }
                if let Some(chat) = body
                    .get("chat")
                    .and_then(|c| c.get("id"))
                    .and_then(Value::as_i64)
                {
                    *chats.entry(chat).or_default() += 1;
                }
            }
        }
        lengths.sort_unstable();
        profile.text_chars_p50 = percentile(&lengths, 0.50);
        profile.text_chars_p99 = percentile(&lengths, 0.99);
        profile.chats = chats.len();
        let top = chats.values().copied().max().unwrap_or(0);
        profile.top_chat_share = top as f64 / updates.len().max(1) as f64;
        profile
    }

    /// One line for the report.
    pub fn summary(&self) -> String {
        let n = self.updates.max(1) as f64;
        format!(
            "{} updates, {:.0} B mean, {:.1}% media, {:.1}% edits, {:.1}% reactions, {:.1}% duplicates, \
             text chars p50 {} p99 {}, {} chats, busiest chat {:.1}% of updates",
            self.updates,
            self.bytes as f64 / n,
            100.0 * self.media as f64 / n,
            100.0 * self.edits as f64 / n,
            100.0 * self.reactions as f64 / n,
            100.0 * self.duplicates as f64 / n,
            self.text_chars_p50,
            self.text_chars_p99,
            self.chats,
            100.0 * self.top_chat_share,
        )
    }
}

/// The value at quantile `q` of sorted `values` (0 when empty).
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_ids_increase_across_communities() {
        let config = WorkloadConfig {
            duplicate_per_mille: 0,
            ..WorkloadConfig::default()
        };
        let a = Workload::new(&config).expect("valid config").batch(300);
        let b = Workload::new(&config).expect("valid config").batch(300);
        assert_eq!(a, b);
        let ids: Vec<i64> = a
            .iter()
            .map(|raw| {
                serde_json::from_slice::<Value>(raw).expect("json")["update_id"]
                    .as_i64()
                    .expect("integer id")
            })
            .collect();
        let expected: Vec<i64> = (0..300).map(|i| config.first_update_id + i).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn an_even_stream_has_the_same_count_of_every_kind() {
        let config = WorkloadConfig {
            duplicate_per_mille: 0,
            mix: Mix::Even,
            ..WorkloadConfig::default()
        };
        let updates = Workload::new(&config)
            .expect("valid config")
            .batch(11 * 300);
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for raw in &updates {
            *counts.entry(kind_of(raw).expect("a kind")).or_default() += 1;
        }
        let expected: std::collections::BTreeMap<String, usize> =
            EVEN_KINDS.iter().map(|k| ((*k).to_owned(), 300)).collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn about_one_percent_of_updates_are_exact_redeliveries() {
        let updates = Workload::new(&WorkloadConfig::default())
            .expect("valid config")
            .batch(20_000);
        let profile = WorkloadProfile::of(&updates);
        assert!(
            (100..=300).contains(&profile.duplicates),
            "{} duplicates in 20000",
            profile.duplicates
        );
    }

    #[test]
    fn chat_sizes_are_skewed_and_text_lengths_have_a_long_tail() {
        let updates = Workload::new(&WorkloadConfig::default())
            .expect("valid config")
            .batch(20_000);
        let profile = WorkloadProfile::of(&updates);
        let uniform_share = 1.0 / profile.chats as f64;
        assert!(
            profile.top_chat_share > 5.0 * uniform_share,
            "busiest chat {:.3} vs uniform {:.3}",
            profile.top_chat_share,
            uniform_share
        );
        assert!(
            profile.text_chars_p99 > 5 * profile.text_chars_p50,
            "{}",
            profile.summary()
        );
        let media = profile.media as f64 / profile.updates as f64;
        assert!((0.05..0.15).contains(&media), "{}", profile.summary());
    }

    #[test]
    fn restamping_keeps_every_byte_after_the_id() {
        let raw = br#"{"update_id":5,"message":{"text":"x"}}"#;
        assert_eq!(
            restamp(raw, 123),
            br#"{"update_id":123,"message":{"text":"x"}}"#.to_vec()
        );
    }
}
