//! `run --shard i/n`: n workers run side by side against one tenant, each with its own rows,
//! state and lock, and together reach exactly what one unsharded run reaches.

use std::collections::BTreeMap;

use voyado_emulator::{Emulator, Endpoint};

use crate::common::{Output, Sync, cli_async, json as parse};
use crate::diff::{Row, batch};
use crate::sync::{KEY, assert_no_violations, by_email, emulator_config, outcomes, row, sync_for};

fn rows(n: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = (0..n)
        .map(|i| row(&format!("u{i}@x.se"), i as i64))
        .collect();
    rows.push(row("not-an-email", 1));
    rows
}

async fn cmd(s: &Sync, command: &str, shard: Option<&str>) -> Output {
    let cfg = s.config().to_str().unwrap().to_string();
    let mut args = vec![command, "--json", "-c", &cfg];
    if let Some(sh) = shard {
        args.extend(["--shard", sh]);
    }
    cli_async(&args, &[("VOYADO_SYNC_TEST_KEY", KEY)]).await
}

/// Runs the three shards at once and sums their outcomes and counts.
async fn run_shards(s: &Sync) -> ([u64; 6], [u64; 5]) {
    let (a, b, c) = tokio::join!(
        cmd(s, "run", Some("0/3")),
        cmd(s, "run", Some("1/3")),
        cmd(s, "run", Some("2/3")),
    );
    let mut sent = [0; 6];
    let mut counts = [0; 5];
    for (i, out) in [a, b, c].iter().enumerate() {
        assert_eq!(out.code, 0, "shard {i}: {}", out.stderr);
        let r = parse(out);
        assert_eq!(r["shard"], format!("{i}/3"));
        for (k, v) in outcomes(&r).iter().enumerate() {
            sent[k] += v;
        }
        for (k, v) in crate::common::counts(&r).iter().enumerate() {
            counts[k] += v;
        }
    }
    (sent, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_reach_exactly_what_one_run_reaches_sending_no_row_twice() {
    let n = 90;
    let one = Emulator::start(emulator_config()).await.unwrap();
    let whole = sync_for(
        &one,
        "email",
        "upsert",
        "[warnings]\nmax_invalid_percent = 50\n",
    );
    let many = Emulator::start(emulator_config()).await.unwrap();
    let sharded = sync_for(
        &many,
        "email",
        "upsert",
        "[warnings]\nmax_invalid_percent = 50\n",
    );
    whole.land(&batch(&rows(n)));
    sharded.land(&batch(&rows(n)));

    let out = cmd(&whole, "run", None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (sent, counts) = run_shards(&sharded).await;
    assert_eq!(sent, [n as u64, 0, 0, 0, 0, 0]);
    assert_eq!(
        counts,
        [n as u64, 0, 0, 0, 1],
        "each row in exactly one shard"
    );
    assert_eq!(by_email(&many), by_email(&one));
    let req = many.requests();
    assert_eq!(
        req.endpoint(Endpoint::Create),
        n as u64,
        "no row sent twice"
    );
    assert_eq!(
        req.endpoint(Endpoint::Lookup),
        n as u64 + 3,
        "one lookup per row, one key probe per shard"
    );
    for i in 0..3 {
        assert!(
            sharded
                .state_dir()
                .join(format!("shard-{i}-of-3/manifest.json"))
                .exists()
        );
    }

    // The next version: every shard sends only its changed rows.
    let mut next = rows(n);
    for r in next[..n].iter_mut().step_by(10) {
        r.i = Some(r.i.unwrap() + 1000);
    }
    whole.land(&batch(&next));
    sharded.land(&batch(&next));
    assert_eq!(cmd(&whole, "run", None).await.code, 0);
    let before = many.requests();
    let (sent, counts) = run_shards(&sharded).await;
    assert_eq!(sent, [0, 9, 0, 0, 0, 0]);
    assert_eq!(counts, [0, 9, n as u64 - 9, 0, 1]);
    assert_eq!(
        many.requests().endpoint(Endpoint::Update) - before.endpoint(Endpoint::Update),
        9
    );
    assert_eq!(by_email(&many), by_email(&one));
    assert_no_violations(&many);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_shard_count_needs_a_reset() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    s.land(&batch(&rows(12)[..12]));
    assert_eq!(cmd(&s, "run", Some("0/2")).await.code, 0);

    for (shard, what) in [
        (None, "split into 2 shards; run each with --shard i/n"),
        (Some("0/3"), "split into 2 shards, not 3"),
    ] {
        let out = cmd(&s, "plan", shard).await;
        assert_eq!(out.code, 2, "{shard:?}: {}", out.stderr);
        assert!(out.stderr.contains(what), "{shard:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    let out = cmd(&s, "run", Some("3/3")).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("expected i/n with 0 <= i < n"),
        "{}",
        out.stderr
    );

    // reset (unsharded) forgets every shard; the sync then runs as 3 shards.
    let cfg = s.config().to_str().unwrap().to_string();
    let out = cli_async(&["reset", "-c", &cfg], &[("VOYADO_SYNC_TEST_KEY", KEY)]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (sent, _) = run_shards(&s).await;
    // Every row is sent again once (found and updated with every value), none created twice.
    assert_eq!(sent[0] + sent[1], 12);
    let contacts: BTreeMap<_, _> = by_email(&emu);
    assert_eq!(contacts.len(), 12);
    assert_eq!(emu.contacts().len(), 12);

    // An unsharded run over a sharded state is refused; so is sharding an unsharded one.
    let out = cmd(&s, "run", None).await;
    assert_eq!(out.code, 2);
    let fresh = sync_for(&emu, "email", "upsert", "");
    fresh.land(&batch(&rows(3)[..3]));
    assert_eq!(cmd(&fresh, "run", None).await.code, 0);
    let out = cmd(&fresh, "run", Some("1/2")).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("its state is unsharded"),
        "{}",
        out.stderr
    );
}
