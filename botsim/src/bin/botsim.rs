//! `botsim` — the simulated Telegram Bot API as a standalone server, for the compose stack's
//! `demo` profile and `deploy/tests/compose-e2e`.
//!
//! Usage: `botsim [--listen ADDR] [--tokens T1,T2,…] [--updates N] [--rate R] [--seed S]
//! [--groups G] [--users U] [--sent-log FILE]`; every flag can also be given as `BOTSIM_<FLAG>`
//! in the environment (`BOTSIM_TOKENS`, `BOTSIM_RATE`, …), flags winning.
//!
//! It serves the Bot API on `--listen` (default `0.0.0.0:8081`; clients use
//! `http://HOST:PORT` as `TELEGRAM_API_URL`) for each token (default: one simulated bot, whose
//! token is well-formed but belongs to no real bot), and feeds each bot a seeded, deterministic
//! stream of realistic updates (`botsim::traffic`) at `--rate` updates per second in all: `--updates
//! N` per bot, then it keeps serving; `--updates 0` (the default) sends until stopped.
//!
//! Guarantees: with `--sent-log FILE`, every update the simulator accepted into a bot's queue is
//! appended to FILE as one line holding exactly its bytes (generated updates are compact JSON and
//! never contain a newline), and FILE is flushed before the "sent" line of each bot's quota is
//! printed — an exactly-once checker reads it as the list of what Telegram delivered. Tokens are
//! never printed. SIGTERM or ctrl-c stops it with exit status 0.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use botsim::traffic::{TrafficConfig, TrafficGenerator};
use botsim::{AllowedUpdates, BotApi, BotApiConfig, BotInfo, KNOWN_KINDS};

/// The token of the default simulated bot (the same bot `tgingest demo` simulates).
const DEFAULT_TOKEN: &str = "7000000001:DEMO-simulated-token-not-a-real-bot";

#[derive(Debug)]
struct Options {
    listen: SocketAddr,
    tokens: Vec<String>,
    updates: u64,
    rate: u32,
    seed: u64,
    groups: usize,
    users: usize,
    sent_log: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: botsim [--listen ADDR] [--tokens T1,T2,...] [--updates N per bot, 0 = endless] \
     [--rate UPDATES_PER_SECOND] [--seed S] [--groups G] [--users U] [--sent-log FILE]"
}

fn parse_options(args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut given: Vec<(String, String)> = Vec::new();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}; {}", usage());
        };
        let value = args
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        given.push((name.to_owned(), value));
    }
    let get = |name: &str| -> Option<String> {
        given
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                std::env::var(format!("BOTSIM_{}", name.replace('-', "_").to_uppercase())).ok()
            })
    };
    const KNOWN: [&str; 8] = [
        "listen", "tokens", "updates", "rate", "seed", "groups", "users", "sent-log",
    ];
    if let Some((name, _)) = given.iter().find(|(n, _)| !KNOWN.contains(&n.as_str())) {
        bail!("unknown option --{name}; {}", usage());
    }
    fn number<T: std::str::FromStr>(
        name: &str,
        value: Option<String>,
        default: T,
    ) -> anyhow::Result<T> {
        match value {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "--{name} (BOTSIM_{}): not a number: {v:?}",
                    name.to_uppercase()
                )
            }),
        }
    }
    let listen = get("listen")
        .unwrap_or_else(|| "0.0.0.0:8081".to_owned())
        .parse()
        .context("--listen (BOTSIM_LISTEN): not an ip:port address")?;
    let tokens: Vec<String> = get("tokens")
        .unwrap_or_else(|| DEFAULT_TOKEN.to_owned())
        .split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        bail!("--tokens (BOTSIM_TOKENS): no token given");
    }
    for (index, token) in tokens.iter().enumerate() {
        bot_id(token).with_context(|| {
            format!(
                "--tokens (BOTSIM_TOKENS): token #{} is not of the form <bot id>:<key>",
                index + 1
            )
        })?;
    }
    let distinct: BTreeSet<&String> = tokens.iter().collect();
    if distinct.len() != tokens.len() {
        bail!("--tokens (BOTSIM_TOKENS): a token is given twice");
    }
    let rate = number("rate", get("rate"), 50u32)?;
    if rate == 0 {
        bail!("--rate (BOTSIM_RATE): must be at least 1");
    }
    Ok(Options {
        listen,
        tokens,
        updates: number("updates", get("updates"), 0u64)?,
        rate,
        seed: number("seed", get("seed"), 1u64)?,
        groups: number("groups", get("groups"), 4usize)?,
        users: number("users", get("users"), 60usize)?,
        sent_log: get("sent-log").map(PathBuf::from),
    })
}

/// The bot id of a token (`<digits>:<key>`), `None` when the token is not of that form.
fn bot_id(token: &str) -> Option<i64> {
    let (id, key) = token.split_once(':')?;
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !key_ok || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// One simulated bot: its token, its traffic and how much of its quota it has sent.
struct SimBot {
    token: String,
    traffic: TrafficGenerator,
    sent: u64,
    filtered: u64,
    announced: bool,
}

#[tokio::main]
async fn main() {
    // One line naming the setting (or the failure), never a backtrace.
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("botsim: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(options).await {
        eprintln!("botsim: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(options: Options) -> anyhow::Result<()> {
    let api = BotApi::start(BotApiConfig {
        addr: options.listen,
        seed: options.seed,
        ..BotApiConfig::default()
    })
    .await?;
    let every_kind: BTreeSet<String> = KNOWN_KINDS.iter().map(|k| (*k).to_owned()).collect();
    let mut bots = Vec::new();
    for (index, token) in options.tokens.iter().enumerate() {
        let id = bot_id(token).context("token checked above")?;
        let info = BotInfo::new(
            id,
            format!("sim_bot_{}", index + 1),
            format!("Simulated bot {}", index + 1),
        );
        api.add_bot(token, info.clone());
        // Traffic queued before the producer's first poll is not filtered by Telegram's default
        // allowed_updates (which leaves some kinds out).
        api.set_allowed_updates(token, AllowedUpdates::Only(every_kind.clone()))?;
        let traffic = TrafficGenerator::new(
            options.seed.wrapping_add(index as u64),
            TrafficConfig {
                groups: options.groups,
                users: options.users,
                bot: info,
                first_update_id: 700_000_000 + 10_000_000 * index as i64,
                ..TrafficConfig::default()
            },
        );
        bots.push(SimBot {
            token: token.clone(),
            traffic,
            sent: 0,
            filtered: 0,
            announced: false,
        });
    }
    let mut sent_log = match &options.sent_log {
        None => None,
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--sent-log: opening {}", path.display()))?,
        )),
    };
    println!(
        "botsim: Bot API on http://{} for {} bot(s); {} updates/s in all, {}, seed {}, {} groups, {} users",
        api.local_addr(),
        bots.len(),
        options.rate,
        if options.updates == 0 {
            "until stopped".to_owned()
        } else {
            format!("{} per bot", options.updates)
        },
        options.seed,
        options.groups,
        options.users
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let started = Instant::now();
    let mut pushed: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last_report = Instant::now();
    let mut next_bot = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let due = (started.elapsed().as_secs_f64() * f64::from(options.rate)) as u64;
        while pushed < due {
            // Round robin over the bots that still have quota.
            let open: Vec<usize> = (0..bots.len())
                .map(|i| (next_bot + i) % bots.len())
                .filter(|&i| options.updates == 0 || bots[i].sent < options.updates)
                .collect();
            let Some(&index) = open.first() else { break };
            next_bot = (index + 1) % bots.len();
            let bot = &mut bots[index];
            let update = bot.traffic.next_update();
            if update.contains(&b'\n') {
                bail!("a generated update contains a newline; the sent log cannot hold it");
            }
            if api.push_update(&bot.token, update.clone())? {
                bot.sent += 1;
                if let Some(log) = sent_log.as_mut() {
                    log.write_all(&update)?;
                    log.write_all(b"\n")?;
                }
            } else {
                bot.filtered += 1;
            }
            pushed += 1;
        }
        for (index, bot) in bots.iter_mut().enumerate() {
            if options.updates > 0 && bot.sent >= options.updates && !bot.announced {
                if let Some(log) = sent_log.as_mut() {
                    log.flush().context("flushing the sent log")?;
                }
                bot.announced = true;
                println!(
                    "botsim: bot {} sent {} updates ({} of an unrequested kind dropped, as Telegram drops them)",
                    index + 1,
                    bot.sent,
                    bot.filtered
                );
            }
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            if let Some(log) = sent_log.as_mut() {
                log.flush().context("flushing the sent log")?;
            }
            let mut pending = 0;
            for bot in &bots {
                pending += api.pending_update_count(&bot.token)?;
            }
            let sent: u64 = bots.iter().map(|b| b.sent).sum();
            println!("botsim: {sent} updates sent, {pending} not yet confirmed by the client");
        }
    }
    if let Some(log) = sent_log.as_mut() {
        log.flush().context("flushing the sent log")?;
    }
    let sent: u64 = bots.iter().map(|b| b.sent).sum();
    println!("botsim: stopping after {sent} updates");
    api.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Options> {
        parse_options(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn tokens_must_be_well_formed_and_distinct() {
        assert!(parse(&["--tokens", "1:a,2:b"]).is_ok());
        let err = parse(&["--tokens", "1:a,nope"]).unwrap_err();
        assert!(format!("{err:#}").contains("token #2"), "{err:#}");
        assert!(
            !format!("{err:#}").contains("nope"),
            "a token reached an error: {err:#}"
        );
        assert!(parse(&["--tokens", "1:a,1:a"]).is_err());
    }

    #[test]
    fn flags_are_checked() {
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--rate", "x"]).is_err());
        assert!(parse(&["--bogus", "1"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        let options = parse(&["--updates", "5", "--rate", "7", "--listen", "127.0.0.1:9"]).unwrap();
        assert_eq!((options.updates, options.rate), (5, 7));
        assert_eq!(options.listen, "127.0.0.1:9".parse().unwrap());
    }
}
