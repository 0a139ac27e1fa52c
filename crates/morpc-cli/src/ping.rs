//! `morpc ping ADDR`: V07 ping/pong round trips, with latency percentiles.

use std::time::Duration;

use clap::Args;

use crate::exit::{Failure, runtime};
use crate::show::micros;
use crate::wire::{ConnectArgs, FramingArg};

/// The arguments of `morpc ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Pings to send.
    #[arg(long, short = 'c', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Pause between two pings.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Round-trip times of the pings answered, and what became of the others.
#[derive(Debug, Default)]
struct Tally {
    /// Round-trip times, in the order sent.
    rtts: Vec<Duration>,
    /// Why each lost ping was lost.
    errors: Vec<String>,
}

impl Tally {
    /// The `q` quantile (nearest rank) of the answered pings.
    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// min, p50, p90, p99, max and mean in microseconds, if any ping was answered.
    fn summary(&self) -> Option<[(&'static str, f64); 6]> {
        let mut sorted = self.rtts.clone();
        sorted.sort();
        let (first, last) = (*sorted.first()?, *sorted.last()?);
        let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
        Some([
            ("min", micros(first)),
            ("p50", micros(Self::quantile(&sorted, 0.5))),
            ("p90", micros(Self::quantile(&sorted, 0.9))),
            ("p99", micros(Self::quantile(&sorted, 0.99))),
            ("max", micros(last)),
            ("mean", micros(mean)),
        ])
    }
}

/// Runs `morpc ping`.
pub(crate) fn run(args: PingArgs) -> Result<(), Failure> {
    if args.conn.wire.framing == FramingArg::V05 {
        return Err(Failure::Usage(
            "ping needs the V07 framing: V05 has no ping frames".into(),
        ));
    }
    let tally = runtime()?.block_on(pings(&args))?;
    let sent = args.count as usize;
    let received = tally.rtts.len();
    let summary = tally.summary();
    if args.json {
        let rtt = summary.map(|s| {
            s.iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>()
        });
        let out = serde_json::json!({
            "address": args.conn.addr,
            "sent": sent,
            "received": received,
            "lost": sent - received,
            "rtt_us": rtt,
            "errors": tally.errors,
        });
        println!("{out}");
    } else {
        println!("--- {} ping statistics ---", args.conn.addr);
        println!("{sent} sent, {received} received, {} lost", sent - received);
        if let Some(s) = summary {
            let names: Vec<_> = s.iter().map(|(k, _)| *k).collect();
            let values: Vec<_> = s.iter().map(|(_, v)| format!("{v:.1}")).collect();
            println!("rtt {} = {} µs", names.join("/"), values.join("/"));
        }
    }
    if received == sent {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

/// Sends the pings one after the other.
async fn pings(args: &PingArgs) -> Result<Tally, Failure> {
    let client = args.conn.client().await?;
    let mut tally = Tally::default();
    for n in 1..=args.count {
        if n > 1 {
            tokio::time::sleep(args.interval).await;
        }
        match client.ping(&args.conn.addr, args.conn.timeout).await {
            Ok(rtt) => {
                if !args.json {
                    println!("pong {n} from {}: {:.1} µs", args.conn.addr, micros(rtt));
                }
                tally.rtts.push(rtt);
            }
            Err(e) => {
                if !args.json {
                    println!("ping {n} to {}: {e}", args.conn.addr);
                }
                tally.errors.push(e.to_string());
            }
        }
    }
    client.close();
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let sorted: Vec<_> = (1..=10).map(ms).collect();
        assert_eq!(Tally::quantile(&sorted, 0.5), ms(5));
        assert_eq!(Tally::quantile(&sorted, 0.9), ms(9));
        assert_eq!(Tally::quantile(&sorted, 0.99), ms(10));
        assert_eq!(Tally::quantile(&sorted[..1], 0.5), ms(1));
        assert!(Tally::default().summary().is_none());
    }
}
