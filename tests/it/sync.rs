//! `run` end to end: the real binary against the emulator on 127.0.0.1, asserting the
//! emulator's final contacts and zero protocol violations.

use serde_json::{Value, json};
use voyado_emulator::{Deletion, Emulator, EmulatorConfig, Endpoint, Faults};

use crate::common::{Output, Sync, cli, cli_async, json as parse};
use crate::diff::{MAPPING, Row, batch};

pub(crate) const KEY: &str = "test-api-key-7f3a";

pub(crate) fn emulator_config() -> EmulatorConfig {
    let mut c = EmulatorConfig::new(KEY);
    c.custom_attributes = ["b", "d", "ts", "i", "f", "tier"]
        .map(String::from)
        .to_vec();
    c
}

pub(crate) use crate::diff::row_i as row;

/// A sync against `emu` with the standard mapping; `key`/`mode` as given.
pub(crate) fn sync_for(emu: &Emulator, key: &str, mode: &str, extra: &str) -> Sync {
    let s = Sync::new();
    s.write_config(
        "SELECT * FROM t",
        "id",
        key,
        mode,
        &format!("{MAPPING}\n{extra}"),
    );
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("http://127.0.0.1:9", &emu.base_url()),
    )
    .unwrap();
    s
}

/// Runs `voyado-sync run --json` without blocking the emulator's runtime.
pub(crate) async fn run(s: &Sync, args: &[&str]) -> Output {
    let cfg = s.config().to_str().unwrap().to_string();
    let mut all = vec!["run", "--json", "-c", &cfg];
    all.extend(args);
    cli_async(&all, &[("VOYADO_SYNC_TEST_KEY", KEY)]).await
}

pub(crate) fn outcomes(v: &Value) -> [u64; 6] {
    [
        "created",
        "updated",
        "skipped",
        "not_found",
        "rejected",
        "failed",
    ]
    .map(|k| {
        v["outcomes"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no outcome {k} in {v}"))
    })
}

pub(crate) fn assert_no_violations(emu: &Emulator) {
    let v = emu.violations();
    assert!(v.0.is_empty(), "protocol violations: {v:?}");
}

/// Contacts keyed by email, attributes only (without the memberNumber Voyado generates).
pub(crate) fn by_email(emu: &Emulator) -> std::collections::BTreeMap<String, Value> {
    emu.contacts()
        .into_iter()
        .map(|c| {
            let email = c.str("email").unwrap_or_default().to_string();
            let mut attrs = c.attributes.clone();
            attrs.remove("memberNumber");
            (email, Value::Object(attrs))
        })
        .collect()
}

/// Someone else (a person in Voyado's UI, another integration) edits a contact.
pub(crate) async fn edit_in_voyado(emu: &Emulator, email: &str, change: Value) {
    let id = emu.find("email", email)[0].id.clone();
    let resp = reqwest::Client::new()
        .patch(format!("{}/api/v3/contacts/{id}", emu.base_url()))
        .header("apikey", KEY)
        .header("user-agent", "a-person/1.0")
        .json(&change)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

fn full(email: &str, i: i64) -> Value {
    json!({"email": email, "firstName": "Ada", "birthDay": "2022-01-08", "b": true,
           "d": 12.5, "ts": "2023-11-14T22:13:20Z", "i": i, "f": 1.5})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_full_then_incremental_then_nothing() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[warnings]\nmax_invalid_percent = 50\n",
    );
    let mut empty = row("Empty@X.se ", 2);
    empty.s = Some("  ".into());
    empty.f = Some(f64::NAN);
    empty.b = None;
    s.land(&batch(&[row("a@x.se", 1), empty.clone(), row("bad", 1)]));

    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    assert_eq!(outcomes(&r), [2, 0, 0, 0, 0, 0]);
    assert_eq!(r["counts"]["invalid"], 1);
    let contacts = by_email(&emu);
    assert_eq!(contacts.len(), 2);
    assert_eq!(contacts["a@x.se"], full("a@x.se", 1));
    // empty values are never sent: no firstName, no f, no b
    assert_eq!(
        contacts["empty@x.se"],
        json!({"email": "empty@x.se", "birthDay": "2022-01-08", "d": 12.5,
               "ts": "2023-11-14T22:13:20Z", "i": 2})
    );
    assert_no_violations(&emu);
    let lookups = emu.requests().endpoint(Endpoint::Lookup);
    assert_eq!(lookups, 3, "probe + one lookup per new row");

    // Someone edits a contact in Voyado; our next change must not overwrite that edit.
    edit_in_voyado(&emu, "a@x.se", json!({"firstName": "Edited"})).await;

    let mut a = row("a@x.se", 5);
    a.b = Some(false);
    let mut e2 = empty.clone();
    e2.s = Some("Eve".into());
    s.land(&batch(&[a, e2, row("new@x.se", 1)]));
    let before = emu.requests();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    assert_eq!(outcomes(&r), [1, 2, 0, 0, 0, 0]);
    let after = emu.requests();
    // two updates by remembered contactId (no lookup), one lookup + create for the new row
    assert_eq!(
        after.endpoint(Endpoint::Update) - before.endpoint(Endpoint::Update),
        2
    );
    assert_eq!(
        after.endpoint(Endpoint::Lookup) - before.endpoint(Endpoint::Lookup),
        2
    );
    assert_eq!(
        after.endpoint(Endpoint::Create) - before.endpoint(Endpoint::Create),
        1
    );
    let contacts = by_email(&emu);
    let mut want_a = full("a@x.se", 5);
    want_a["b"] = json!(false);
    want_a["firstName"] = json!("Edited");
    assert_eq!(
        contacts["a@x.se"], want_a,
        "only changed attributes are sent"
    );
    assert_eq!(contacts["empty@x.se"]["firstName"], "Eve");
    assert_eq!(contacts["new@x.se"], full("new@x.se", 1));
    assert_no_violations(&emu);

    // No change: no request at all.
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 0, 0, 0]);
    assert_eq!(emu.requests().total(), before);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_never_creates_and_remembers_not_found() {
    let mut c = emulator_config();
    c.seed_contacts =
        vec![serde_json::from_value(json!({"email": "a@x.se", "firstName": "Old"})).unwrap()];
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(&emu, "email", "update", "");
    s.land(&batch(&[row("a@x.se", 1), row("ghost@x.se", 1)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [0, 1, 0, 1, 0, 0]);
    assert_eq!(emu.contacts().len(), 1);
    assert_eq!(by_email(&emu)["a@x.se"], full("a@x.se", 1));

    // unchanged not_found rows are not looked up again
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 0, 0, 0]);
    assert_eq!(emu.requests().total(), before);

    // ...until their values change
    s.land(&batch(&[row("a@x.se", 1), row("ghost@x.se", 2)]));
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 1, 0, 0]);
    assert_eq!(emu.contacts().len(), 1);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_baseline_changed_rows_are_looked_up_and_sent_only_their_changes() {
    let mut c = emulator_config();
    c.seed_contacts =
        vec![serde_json::from_value(json!({"email": "a@x.se", "firstName": "Kept"})).unwrap()];
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    s.land(&batch(&[row("a@x.se", 1)]));
    let b = cli(&["baseline", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    s.land(&batch(&[row("a@x.se", 9)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [0, 1, 0, 0, 0, 0]);
    let a = &by_email(&emu)["a@x.se"];
    assert_eq!(a, &json!({"email": "a@x.se", "firstName": "Kept", "i": 9}));
    // the contactId is remembered now: the next change needs no lookup
    s.land(&batch(&[row("a@x.se", 10)]));
    let lookups = emu.requests().endpoint(Endpoint::Lookup);
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 1, 0, 0, 0, 0]);
    assert_eq!(
        emu.requests().endpoint(Endpoint::Lookup),
        lookups + 1,
        "only the probe"
    );
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_deleted_in_voyado_is_recreated_or_not_found() {
    for (mode, created, not_found, left) in [("upsert", 1, 0, 1), ("update", 0, 1, 0)] {
        let emu = Emulator::start(emulator_config()).await.unwrap();
        let s = sync_for(&emu, "email", "upsert", "");
        s.land(&batch(&[row("a@x.se", 1)]));
        assert_eq!(run(&s, &[]).await.code, 0);
        let ids: Vec<String> = emu.contacts().into_iter().map(|c| c.id).collect();
        emu.delete_contacts(Deletion::Ids(ids));
        let text = std::fs::read_to_string(s.config()).unwrap();
        std::fs::write(
            s.config(),
            text.replace("mode = \"upsert\"", &format!("mode = \"{mode}\"")),
        )
        .unwrap();
        s.land(&batch(&[row("a@x.se", 2)]));
        let out = run(&s, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            outcomes(&parse(&out)),
            [created, 0, 0, not_found, 0, 0],
            "{mode}"
        );
        assert_eq!(emu.contacts().len(), left, "{mode}");
        if left == 1 {
            assert_eq!(by_email(&emu)["a@x.se"], full("a@x.se", 2));
        }
        assert_eq!(emu.requests().count(Endpoint::Update, 404), 1);
        assert_no_violations(&emu);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_creating_first_is_taken_over_not_duplicated() {
    let mut c = emulator_config();
    c.faults = Faults {
        seed: 3,
        race_create_rate: 1.0,
        ..Faults::default()
    };
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 2)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(emu.requests().count(Endpoint::Create, 409), 2);
    assert_eq!(outcomes(&parse(&out)), [0, 2, 0, 0, 0, 0]);
    let mut contacts = by_email(&emu);
    // The fault also "creates" the key probe's address after its 404; ignore that one.
    contacts.remove(voyado_sync::sink::voyado::calls::PROBE_EMAIL);
    assert_eq!(contacts.len(), 2, "no duplicates");
    assert_eq!(contacts["a@x.se"]["i"], 1);
    assert_eq!(contacts["b@x.se"]["i"], 2);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_matches_reject_the_row_and_never_guess() {
    let mut c = emulator_config();
    c.seed_contacts = vec![
        serde_json::from_value(json!({"email": "p1@x.se", "mobilePhone": "+46701234567"})).unwrap(),
        serde_json::from_value(json!({"email": "p2@x.se", "mobilePhone": "+46701234567"})).unwrap(),
    ];
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(
        &emu,
        "mobilePhone",
        "update",
        "[warnings]\nmax_rejected_percent = 100\n",
    );
    s.land(&batch(&[row(" +46701234567", 1)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    assert_eq!(outcomes(&r), [0, 0, 0, 0, 1, 0]);
    let reason = r["samples"]["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("MultipleMatches"), "{reason}");
    assert_eq!(emu.requests().endpoint(Endpoint::Update), 0);
    // rejected rows are not sent again unless they change
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 0, 0, 0]);
    assert_eq!(emu.requests().total(), before);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_with_plus_slash_and_non_ascii_are_encoded() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    let ids = ["first+tag@x.se", "a/b&c#d%e@x.se", "åsa.öberg@exempel.se"];
    s.land(&batch(&ids.map(|i| row(i, 1))));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [3, 0, 0, 0, 0, 0]);
    // a second run finds each of them by lookup rather than creating duplicates
    let reset = cli(&["reset", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(reset.code, 0);
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 3, 0, 0, 0, 0]);
    assert_eq!(emu.contacts().len(), 3);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_api_key_stops_before_anything_is_sent() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    s.land(&batch(&[row("a@x.se", 1)]));
    let cfg = s.config().to_str().unwrap().to_string();
    let out = cli_async(
        &["run", "-c", &cfg],
        &[("VOYADO_SYNC_TEST_KEY", "wrong-key-123")],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("API key rejected (401)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-key-123"));
    assert_eq!(emu.requests().total(), 1, "only the probe");
    assert!(emu.contacts().is_empty());
    // nothing was recorded: the next run with the right key sends everything
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [1, 0, 0, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried() {
    let mut c = emulator_config();
    c.faults = Faults {
        seed: 11,
        error_rate: 0.3,
        rate_limit: Some(voyado_emulator::RateLimit {
            requests: 5,
            window: std::time::Duration::from_millis(500),
            retry_after_secs: None,
        }),
        ..Faults::default()
    };
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nrequests_per_second = 50\nmax_retries = 20\nretry_initial_backoff_ms = 20\n",
    );
    let rows: Vec<Row> = (0..20).map(|i| row(&format!("u{i}@x.se"), i)).collect();
    s.land(&batch(&rows));
    let mut total = [0u64; 6];
    let mut runs = 0;
    loop {
        runs += 1;
        let out = run(&s, &[]).await;
        let r = parse(&out);
        let o = outcomes(&r);
        for k in 0..6 {
            total[k] += o[k];
        }
        assert!(r["retries"].as_u64().unwrap() > 0 || runs > 1);
        if out.code == 0 {
            break;
        }
        assert_eq!(out.code, 4, "{}", out.stderr);
        assert!(runs < 3, "did not converge: {}", out.stderr);
    }
    assert!(
        emu.requests().count(Endpoint::Lookup, 429) + emu.requests().count(Endpoint::Create, 429)
            > 0
    );
    let contacts = by_email(&emu);
    assert_eq!(contacts.len(), 20, "no duplicates, none missing");
    for i in 0..20 {
        assert_eq!(contacts[&format!("u{i}@x.se")]["i"], i);
    }
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_answer_does_not_create_a_duplicate() {
    let mut c = emulator_config();
    c.faults = Faults {
        seed: 5,
        lost_answer_rate: 0.5,
        ..Faults::default()
    };
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nrequest_timeout_secs = 5\nretry_initial_backoff_ms = 20\n",
    );
    let rows: Vec<Row> = (0..12).map(|i| row(&format!("u{i}@x.se"), i)).collect();
    s.land(&batch(&rows));
    for _ in 0..3 {
        let out = run(&s, &[]).await;
        if out.code == 0 {
            break;
        }
        assert_eq!(out.code, 4, "{}", out.stderr);
    }
    assert!(
        emu.injected_faults().lost_answers > 0,
        "the fault was exercised"
    );
    let contacts = by_email(&emu);
    assert_eq!(emu.contacts().len(), 12, "no duplicates");
    for i in 0..12 {
        assert_eq!(contacts[&format!("u{i}@x.se")]["i"], i);
    }
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_exit_3_after_committing_and_guards_exit_5_before_sending() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    let mut rows: Vec<Row> = (0..10).map(|i| row(&format!("u{i}@x.se"), i)).collect();
    rows.push(row("broken", 1));
    s.land(&batch(&rows));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let r = parse(&out);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("max_invalid_percent")
    );
    assert_eq!(emu.contacts().len(), 10, "committed despite the warning");

    // A model that lost half its rows trips the deletion guard.
    s.land(&batch(&rows[..5]));
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("max_deleted_percent"), "{}", out.stderr);
    assert_eq!(emu.requests().total(), before, "nothing sent");
    let out = run(&s, &["--force"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(parse(&out)["counts"]["deleted"], 5);
    // deleted rows are removed from the snapshot, not from Voyado
    assert_eq!(emu.contacts().len(), 10);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_contact_id_updates_directly_and_a_known_contact_id_column_skips_lookups() {
    let mut c = emulator_config();
    c.seed_contacts = vec![
        serde_json::from_value(json!({"id": "11111111-aaaa", "email": "a@x.se"})).unwrap(),
        serde_json::from_value(json!({"id": "22222222-bbbb", "email": "b@x.se"})).unwrap(),
    ];
    let emu = Emulator::start(c).await.unwrap();
    // key contactId: the identifier is the contact id
    let s = sync_for(
        &emu,
        "contactId",
        "update",
        "[warnings]\nmax_rejected_percent = 100\n",
    );
    s.land(&batch(&[row("11111111-aaaa", 1), row("99999999-dead", 2)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [0, 1, 0, 1, 0, 0]);
    assert_eq!(
        emu.requests().endpoint(Endpoint::Lookup),
        1,
        "only the probe"
    );
    assert_eq!(emu.contact("11111111-aaaa").unwrap().attributes["i"], 1);

    // email key with a contact_id_column: rows carrying an id need no lookup
    let s = Sync::new();
    s.write_config(
        "SELECT *, CASE WHEN id = 'b@x.se' THEN '22222222-bbbb' END AS voyado_id FROM t",
        "id",
        "email",
        "upsert",
        &format!("{MAPPING}\n"),
    );
    let text = std::fs::read_to_string(s.config()).unwrap();
    let text = text.replace("http://127.0.0.1:9", &emu.base_url()).replace(
        "key = \"email\"",
        "key = \"email\"\ncontact_id_column = \"voyado_id\"",
    );
    std::fs::write(s.config(), text).unwrap();
    s.land(&batch(&[row("b@x.se", 7), row("c@x.se", 8)]));
    let lookups = emu.requests().endpoint(Endpoint::Lookup);
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [1, 1, 0, 0, 0, 0]);
    // probe + c's lookup; b went straight to its PATCH
    assert_eq!(emu.requests().endpoint(Endpoint::Lookup), lookups + 2);
    assert_eq!(emu.contact("22222222-bbbb").unwrap().attributes["i"], 7);
    assert_no_violations(&emu);
}

#[test]
fn demo_shows_a_full_then_an_incremental_then_an_empty_sync() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["-q", "demo", "--dir", dir.path().to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let o = &out.stdout;
    assert!(
        o.contains("outcomes: created 36, updated 0, skipped 0, not_found 0, rejected 0, failed 0"),
        "{o}"
    );
    assert!(
        o.contains("outcomes: created 5, updated 6, skipped 1, not_found 0, rejected 0, failed 0"),
        "{o}"
    );
    assert!(o.contains("Voyado saw: 0 lookups (the API key probe included), 0 creates, 0 updates; it now holds 41 contacts; protocol violations: 0"), "{o}");
    assert_eq!(o.matches("protocol violations: 0").count(), 3);
    // history lists the three runs from the stored reports
    let h = cli(
        &[
            "history",
            "--json",
            "-c",
            dir.path().join("voyado-sync.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(h.code, 0, "{}", h.stderr);
    let runs: Vec<Value> = serde_json::from_str(h.stdout.trim()).unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[1]["outcomes"]["created"], 5);
    assert_eq!(runs[2]["counts"]["unchanged"], 38);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_the_time_spent_on_one_request() {
    let mut c = emulator_config();
    c.faults = Faults {
        seed: 1,
        error_rate: 1.0,
        ..Faults::default()
    };
    let emu = Emulator::start(c).await.unwrap();
    // 100 retries allowed, but only one second for them: the budget must stop it first.
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nmax_retries = 100\nretry_budget_secs = 1\nretry_initial_backoff_ms = 200\n",
    );
    s.land(&batch(&[row("a@x.se", 1)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("gave up after"), "{}", out.stderr);
    let attempts = emu.requests().endpoint(Endpoint::Lookup);
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} probe attempts in a 1 s budget"
    );
    assert!(emu.contacts().is_empty());
}
