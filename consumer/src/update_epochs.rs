//! A bot's update-id epochs: the runs of Telegram update ids within which the update id alone
//! orders updates, so projections never take their order from receive time
//! (`migrations/0003_update_order.sql` states the rule; this module implements it).
//!
//! Telegram numbers a bot's updates sequentially and restarts at a random id only after at least
//! a week without updates. An update is assigned an epoch once, when its first copy is written,
//! and `raw_updates.update_epoch` keeps it, so every later copy (webhook retry, Kafka redelivery,
//! replay, redrive) reuses it. A new update's epoch comes from its receive time and the bot's
//! epochs in `bot_update_epochs`:
//! - received at least [`RESTART_SILENCE_MS`] after the newest epoch's last receive time: it opens
//!   the next epoch, starting at its receive time;
//! - received before the newest epoch started: the latest epoch started at or before it (the
//!   first epoch when none did);
//! - otherwise, and without any receive time: the newest epoch.
//!
//! Guarantees: one read and at most one write per batch (no round trip per record; stored copies
//! are looked up only for bots past epoch 0, or in the rare batch that opens a bot's epoch 1,
//! which reads once more); the write
//! happens only when an epoch opens or a bot is first seen, or an epoch's last receive time moved
//! by more than [`LAST_RECEIVED_SLACK_MS`], so the per-bot rows are not a hot spot that every
//! partition's batch locks; concurrent writers agree, since an opened epoch is always "the newest
//! read + 1" and starts and last receive times merge with LEAST / GREATEST. A row that already
//! holds what the write would merge into it is filtered out before the insert, so a worker that
//! read a stale row takes no lock on it (`ON CONFLICT DO UPDATE … WHERE` locks even a row its
//! `WHERE` refuses). The written rows are
//! sorted by key and are the first rows a batch locks (before `raw_updates`), so they keep the
//! writers' fixed lock order.

use std::collections::HashMap;

use sqlx::PgConnection;

/// A silence in a bot's receive times this long opens its next epoch: Telegram's 7 days less a
/// day for the delay between an update and its receipt (Telegram keeps an unconfirmed update at
/// most 24 hours). Opening an epoch on a silence that did not restart the ids is harmless: the
/// later epoch holds the later updates.
pub const RESTART_SILENCE_MS: i64 = 6 * 86_400_000;

/// How stale the stored last receive time of an epoch may be; far inside the 6-day silence.
pub const LAST_RECEIVED_SLACK_MS: i64 = 3_600_000;

/// An update about to be written, as the epoch assignment sees it.
#[derive(Debug, Clone, Copy)]
pub struct UpdateArrival {
    pub bot_id: i64,
    pub update_id: i64,
    pub payload_sha256: [u8; 32],
    /// tg-received-at, else the Kafka timestamp (ms).
    pub received_at_ms: Option<i64>,
}

/// One epoch of one bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Epoch {
    epoch: i64,
    started_ms: i64,
    last_ms: i64,
}

/// One bot's epochs, oldest first: as stored, and as this batch leaves them.
#[derive(Debug, Default, Clone)]
struct BotEpochs {
    stored: Vec<Epoch>,
    epochs: Vec<Epoch>,
}

impl BotEpochs {
    /// The epoch of a new update received at `received_ms`, opening one when it says so.
    fn assign(&mut self, received_ms: Option<i64>) -> i64 {
        let Some(t) = received_ms else {
            return self.epochs.last().map_or(0, |e| e.epoch);
        };
        let Some(newest) = self.epochs.last_mut() else {
            self.epochs.push(Epoch {
                epoch: 0,
                started_ms: t,
                last_ms: t,
            });
            return 0;
        };
        if t >= newest.started_ms {
            if t.saturating_sub(newest.last_ms) >= RESTART_SILENCE_MS {
                let next = Epoch {
                    epoch: newest.epoch + 1,
                    started_ms: t,
                    last_ms: t,
                };
                self.epochs.push(next);
                return next.epoch;
            }
            newest.last_ms = newest.last_ms.max(t);
            return newest.epoch;
        }
        self.epochs
            .iter()
            .rev()
            .find(|e| e.started_ms <= t)
            .or(self.epochs.first())
            .map_or(0, |e| e.epoch)
    }

    /// Whether an update received at `received_ms` and assigned `epoch` opened that epoch here.
    fn opened_by(&self, epoch: i64, received_ms: Option<i64>) -> bool {
        !self.stored.iter().any(|e| e.epoch == epoch)
            && self
                .epochs
                .iter()
                .any(|e| e.epoch == epoch && Some(e.started_ms) == received_ms)
    }

    /// The epochs to write back: new ones, and those whose last receive time moved by more than
    /// the slack.
    fn changed(&self) -> impl Iterator<Item = &Epoch> {
        self.epochs
            .iter()
            .filter(|e| match self.stored.iter().find(|s| s.epoch == e.epoch) {
                None => true,
                Some(s) => e.last_ms - s.last_ms > LAST_RECEIVED_SLACK_MS,
            })
    }
}

/// Assigns the epoch of every update of a batch (in batch order, which decides within the batch),
/// writing the bots' epochs back when they changed. Returns one epoch per arrival.
pub async fn assign(
    conn: &mut PgConnection,
    arrivals: &[UpdateArrival],
) -> Result<Vec<i64>, sqlx::Error> {
    if arrivals.is_empty() {
        return Ok(Vec::new());
    }
    // While a bot has only epoch 0, every stored copy is in epoch 0: its copies need not be looked
    // up (no index probe per record on the hot path) unless this batch opens its epoch 1.
    let (mut stored_copies, mut bots) = read(conn, arrivals, false).await?;
    let (mut assigned, opened) = assign_in_order(arrivals, &stored_copies, &mut bots);
    if opened {
        (stored_copies, bots) = read(conn, arrivals, true).await?;
        (assigned, _) = assign_in_order(arrivals, &stored_copies, &mut bots);
    }
    if bots.values().any(|b| b.epochs.len() > b.stored.len()) {
        // Once per opened epoch; a bot's first epoch (0) is no restart.
        let mut logged = std::collections::HashSet::new();
        for (a, e) in arrivals.iter().zip(&assigned) {
            if *e > 0
                && bots
                    .get(&a.bot_id)
                    .is_some_and(|b| b.opened_by(*e, a.received_at_ms))
                && logged.insert((a.bot_id, *e))
            {
                tracing::info!(
                    bot_id = a.bot_id,
                    epoch = e,
                    update_id = a.update_id,
                    "a bot's update ids restarted after a silence: a new update-id epoch opens"
                );
            }
        }
    }

    let mut changed: Vec<(i64, Epoch)> = bots
        .iter()
        .flat_map(|(&bot_id, bot)| bot.changed().map(move |e| (bot_id, *e)))
        .collect();
    if !changed.is_empty() {
        changed.sort_unstable_by_key(|(bot_id, e)| (*bot_id, e.epoch));
        sqlx::query(
            "INSERT INTO bot_update_epochs AS e (bot_id, epoch, started_at, last_received_at) \
             SELECT u.bot_id, u.epoch, to_timestamp(u.started_ms / 1000.0), \
                    to_timestamp(u.last_ms / 1000.0) \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                  AS u(bot_id, epoch, started_ms, last_ms) \
             WHERE (SELECT cur.started_at <= to_timestamp(u.started_ms / 1000.0) \
                       AND cur.last_received_at >= to_timestamp(u.last_ms / 1000.0) \
                 FROM bot_update_epochs AS cur \
                 WHERE cur.bot_id = u.bot_id AND cur.epoch = u.epoch) IS NOT TRUE \
             ON CONFLICT (bot_id, epoch) DO UPDATE \
                 SET started_at = LEAST(e.started_at, EXCLUDED.started_at), \
                     last_received_at = GREATEST(e.last_received_at, EXCLUDED.last_received_at) \
                 WHERE EXCLUDED.started_at < e.started_at \
                    OR EXCLUDED.last_received_at > e.last_received_at",
        )
        .bind(changed.iter().map(|(b, _)| *b).collect::<Vec<_>>())
        .bind(changed.iter().map(|(_, e)| e.epoch).collect::<Vec<_>>())
        .bind(
            changed
                .iter()
                .map(|(_, e)| e.started_ms)
                .collect::<Vec<_>>(),
        )
        .bind(changed.iter().map(|(_, e)| e.last_ms).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(assigned)
}

type StoredCopies = HashMap<(i64, i64, Vec<u8>), i64>;

/// The bots' stored epochs and the epochs of the arrivals' stored copies: of every arrival with
/// `all_copies`, else only of bots that have an epoch past 0.
async fn read(
    conn: &mut PgConnection,
    arrivals: &[UpdateArrival],
    all_copies: bool,
) -> Result<(StoredCopies, HashMap<i64, BotEpochs>), sqlx::Error> {
    let mut bot_ids: Vec<i64> = arrivals.iter().map(|a| a.bot_id).collect();
    bot_ids.sort_unstable();
    bot_ids.dedup();
    type Row = (
        i64,
        Option<i64>,
        Option<Vec<u8>>,
        i64,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.bot_id, r.update_id, r.payload_sha256, r.update_epoch, NULL::bigint, NULL::bigint \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[]) AS u(bot_id, update_id, sha) \
         JOIN raw_updates r \
           ON r.bot_id = u.bot_id AND r.update_id = u.update_id AND r.payload_sha256 = u.sha \
         WHERE $5 OR u.bot_id IN (SELECT bot_id FROM bot_update_epochs WHERE epoch > 0) \
         UNION ALL \
         SELECT e.bot_id, NULL, NULL, e.epoch, \
                (extract(epoch FROM e.started_at) * 1000)::bigint, \
                (extract(epoch FROM e.last_received_at) * 1000)::bigint \
         FROM bot_update_epochs e WHERE e.bot_id = ANY($4)",
    )
    .bind(arrivals.iter().map(|a| a.bot_id).collect::<Vec<_>>())
    .bind(arrivals.iter().map(|a| a.update_id).collect::<Vec<_>>())
    .bind(
        arrivals
            .iter()
            .map(|a| a.payload_sha256.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(&bot_ids)
    .bind(all_copies)
    .fetch_all(&mut *conn)
    .await?;

    let mut stored_copies = StoredCopies::new();
    let mut bots: HashMap<i64, BotEpochs> = HashMap::new();
    for (bot_id, update_id, sha, epoch, started_ms, last_ms) in rows {
        match (update_id, sha, started_ms, last_ms) {
            (Some(update_id), Some(sha), _, _) => {
                stored_copies.insert((bot_id, update_id, sha), epoch);
            }
            (_, _, Some(started_ms), Some(last_ms)) => {
                let e = Epoch {
                    epoch,
                    started_ms,
                    last_ms,
                };
                let bot = bots.entry(bot_id).or_default();
                bot.stored.push(e);
                bot.epochs.push(e);
            }
            _ => {}
        }
    }
    for bot in bots.values_mut() {
        bot.stored.sort_unstable_by_key(|e| e.epoch);
        bot.epochs.sort_unstable_by_key(|e| e.epoch);
    }
    Ok((stored_copies, bots))
}

/// The epoch of each arrival, in order (a copy reuses its stored or earlier copy's), and whether
/// the batch opened an epoch past 0 for a bot whose stored epochs are all 0 — the one case where
/// stored copies were not read.
fn assign_in_order(
    arrivals: &[UpdateArrival],
    stored_copies: &StoredCopies,
    bots: &mut HashMap<i64, BotEpochs>,
) -> (Vec<i64>, bool) {
    for bot in bots.values_mut() {
        bot.epochs.clone_from(&bot.stored);
    }
    let mut assigned = Vec::with_capacity(arrivals.len());
    let mut assigned_here: HashMap<(i64, i64, [u8; 32]), i64> = HashMap::new();
    for a in arrivals {
        let key = (a.bot_id, a.update_id, a.payload_sha256);
        let stored = stored_copies.get(&(a.bot_id, a.update_id, a.payload_sha256.to_vec()));
        let epoch = match (stored, assigned_here.get(&key)) {
            (Some(&e), _) | (None, Some(&e)) => e,
            (None, None) => {
                let e = bots.entry(a.bot_id).or_default().assign(a.received_at_ms);
                assigned_here.insert(key, e);
                e
            }
        };
        assigned.push(epoch);
    }
    let opened = bots
        .values()
        .any(|b| b.stored.iter().all(|e| e.epoch == 0) && b.epochs.iter().any(|e| e.epoch > 0));
    (assigned, opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn updates_within_a_silence_shorter_than_six_days_stay_in_one_epoch_in_any_order() {
        let mut bot = BotEpochs::default();
        let times = [5 * DAY, 0, 3 * DAY, DAY, 5 * DAY + 1];
        let epochs: Vec<i64> = times.iter().map(|&t| bot.assign(Some(t))).collect();
        assert_eq!(epochs, [0; 5]);
    }

    #[test]
    fn a_silence_of_six_days_opens_the_next_epoch_and_earlier_receipts_keep_theirs() {
        let mut bot = BotEpochs::default();
        assert_eq!(bot.assign(Some(0)), 0);
        assert_eq!(bot.assign(Some(DAY)), 0);
        assert_eq!(
            bot.assign(Some(7 * DAY)),
            1,
            "6 days after the last receipt"
        );
        assert_eq!(bot.assign(Some(7 * DAY + 5)), 1);
        assert_eq!(
            bot.assign(Some(DAY / 2)),
            0,
            "received before epoch 1 started: epoch 0"
        );
        assert_eq!(bot.assign(None), 1, "no receive time: the newest epoch");
        assert_eq!(bot.assign(Some(-DAY)), 0, "before every epoch: the first");
    }

    #[test]
    fn only_new_epochs_and_last_receipts_past_the_slack_are_written_back() {
        let stored = Epoch {
            epoch: 0,
            started_ms: 0,
            last_ms: DAY,
        };
        let mut bot = BotEpochs {
            stored: vec![stored],
            epochs: vec![stored],
        };
        bot.assign(Some(DAY + LAST_RECEIVED_SLACK_MS));
        assert_eq!(bot.changed().count(), 0, "within the slack");
        bot.assign(Some(DAY + LAST_RECEIVED_SLACK_MS + 1));
        assert_eq!(bot.changed().count(), 1);
        bot.assign(Some(9 * DAY));
        let epochs: Vec<i64> = bot.changed().map(|e| e.epoch).collect();
        assert_eq!(epochs, [0, 1]);
    }
}
