//! `run` through Voyado's bulk endpoints (`[sync] api = "bulk"`): the same end-to-end
//! expectations as the single path (exact final contacts, zero violations), plus what only
//! batches can do wrong: per-item failures, batches that never finish or fail, lost answers
//! to the bulk call, and a run killed while it polls.

use std::time::Duration;

use serde_json::json;
use voyado_emulator::{Deletion, Emulator, EmulatorConfig, Endpoint, Faults, RateLimit};

use crate::common::{Sync, cli, json as parse};
use crate::diff::{Row, batch};
use crate::sync::{
    KEY, assert_no_violations, by_email, edit_in_voyado, emulator_config, outcomes, row, run,
    sync_for,
};

fn bulk_emulator(faults: Faults) -> EmulatorConfig {
    let mut c = emulator_config();
    c.bulk_delay = Duration::from_millis(30);
    c.faults = faults;
    c
}

/// A sync through the bulk path with fast polling; `sync_extra` goes into `[sync]`.
fn bulk_sync(emu: &Emulator, mode: &str, sync_extra: &str, extra: &str) -> Sync {
    let s = sync_for(emu, "email", mode, extra);
    point_at(&s, emu);
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace(
            "state = \"state\"",
            &format!("state = \"state\"\napi = \"bulk\"\nbulk_poll_interval_ms = 20\n{sync_extra}"),
        ),
    )
    .unwrap();
    s
}

/// Points the sync at another emulator (a tenant whose faults are over).
fn point_at(s: &Sync, emu: &Emulator) {
    let text = std::fs::read_to_string(s.config()).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("url = ") {
            out.push_str(&format!("url = \"{}\"\n", emu.base_url()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(s.config(), out).unwrap();
}

fn full(email: &str, i: i64) -> serde_json::Value {
    json!({"email": email, "firstName": "Ada", "birthDay": "2022-01-08", "b": true,
           "d": 12.5, "ts": "2023-11-14T22:13:20Z", "i": i, "f": 1.5})
}

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| row(&format!("u{i}@x.se"), i as i64))
        .collect()
}

fn assert_exact(emu: &Emulator, n: usize) {
    let contacts = by_email(emu);
    assert_eq!(
        emu.contacts().len(),
        n,
        "one contact per row, no duplicates"
    );
    for i in 0..n {
        let email = format!("u{i}@x.se");
        assert_eq!(contacts[&email], full(&email, i as i64), "{email}");
    }
}

fn writes(emu: &Emulator) -> u64 {
    let r = emu.requests();
    r.endpoint(Endpoint::Create) + r.endpoint(Endpoint::Update)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_upsert_full_then_incremental_then_nothing() {
    let emu = Emulator::start(bulk_emulator(Faults::default()))
        .await
        .unwrap();
    let s = bulk_sync(
        &emu,
        "upsert",
        "bulk_batch_size = 5",
        "[warnings]\nmax_invalid_percent = 50\n",
    );
    let mut empty = row("Empty@X.se ", 2);
    empty.s = Some("  ".into());
    empty.f = Some(f64::NAN);
    empty.b = None;
    let mut first = rows(11);
    first.push(empty.clone());
    first.push(row("bad", 1));
    s.land(&batch(&first));

    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    assert_eq!(outcomes(&r), [12, 0, 0, 0, 0, 0]);
    assert_eq!(r["counts"]["invalid"], 1);
    let req = emu.requests();
    assert_eq!(
        req.endpoint(Endpoint::BulkCreate),
        3,
        "12 items in batches of 5"
    );
    assert_eq!(req.endpoint(Endpoint::Lookup), 1, "the key probe only");
    assert_eq!(writes(&emu), 0, "no single-contact write");
    assert!(req.endpoint(Endpoint::BulkStatus) >= 3);
    assert_eq!(r["requests"]["bulk_create"]["202"], 3);
    let contacts = by_email(&emu);
    assert_eq!(contacts.len(), 12);
    assert_eq!(contacts["u3@x.se"], full("u3@x.se", 3));
    assert_eq!(
        contacts["empty@x.se"],
        json!({"email": "empty@x.se", "birthDay": "2022-01-08", "d": 12.5,
               "ts": "2023-11-14T22:13:20Z", "i": 2}),
        "empty values are never sent"
    );
    assert_no_violations(&emu);

    // Someone edits a contact in Voyado; our next change must not overwrite that edit.
    edit_in_voyado(&emu, "u1@x.se", json!({"firstName": "Edited"})).await;

    let mut next = rows(11);
    next[1].i = Some(100);
    next[1].b = Some(false);
    let mut e2 = empty.clone();
    e2.s = Some("Eve".into());
    next.push(e2);
    next.push(row("new@x.se", 1));
    s.land(&batch(&next));
    let before = emu.requests();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [1, 2, 0, 0, 0, 0]);
    let after = emu.requests();
    assert_eq!(
        after.endpoint(Endpoint::BulkUpdate) - before.endpoint(Endpoint::BulkUpdate),
        1
    );
    assert_eq!(
        after.endpoint(Endpoint::BulkCreate) - before.endpoint(Endpoint::BulkCreate),
        1
    );
    assert_eq!(
        after.endpoint(Endpoint::Lookup) - before.endpoint(Endpoint::Lookup),
        1
    );
    let contacts = by_email(&emu);
    let mut want = full("u1@x.se", 100);
    want["b"] = json!(false);
    want["firstName"] = json!("Edited");
    assert_eq!(
        contacts["u1@x.se"], want,
        "only changed attributes are sent"
    );
    assert_eq!(contacts["empty@x.se"]["firstName"], "Eve");
    assert_eq!(contacts["new@x.se"], full("new@x.se", 1));
    assert_no_violations(&emu);

    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 0, 0, 0]);
    assert_eq!(emu.requests().total(), before, "no change: no request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_per_item_failures_existing_deleted_and_invalid_contacts() {
    let mut c = bulk_emulator(Faults::default());
    c.seed_contacts = vec![
        json!({"email": "old@x.se", "firstName": "Old", "i": 9})
            .as_object()
            .unwrap()
            .clone(),
    ];
    let emu = Emulator::start(c).await.unwrap();
    let s = Sync::new();
    s.write_config(
        "SELECT id, s, i, CASE WHEN i = 3 THEN 'M' ELSE 'Female' END AS g FROM t",
        "id",
        "email",
        "upsert",
        "api = \"bulk\"\nbulk_poll_interval_ms = 20\n\n[fields]\ns = \"firstName\"\ng = \"gender\"\n\n[custom_attributes]\ncolumns = [\"i\"]\n\n[warnings]\nmax_rejected_percent = 50\n",
    );
    point_at(&s, &emu);
    s.land(&batch(&[
        row("old@x.se", 1),
        row("a@x.se", 2),
        row("bad@x.se", 3),
    ]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    // old@x.se exists: the create reports it, it is updated with every value instead.
    assert_eq!(outcomes(&r), [1, 1, 0, 0, 1, 0]);
    let reason = r["samples"]["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("ValidationError"), "{reason}");
    assert_eq!(r["samples"]["rejected"][0]["identifier"], "bad@x.se");
    let contacts = by_email(&emu);
    assert_eq!(emu.contacts().len(), 2, "no duplicate of old@x.se");
    assert_eq!(
        contacts["old@x.se"],
        json!({"email": "old@x.se", "firstName": "Ada", "gender": "Female", "i": 1})
    );
    assert_eq!(
        contacts["a@x.se"],
        json!({"email": "a@x.se", "firstName": "Ada", "gender": "Female", "i": 2})
    );
    assert!(!contacts.contains_key("bad@x.se"));
    assert_no_violations(&emu);

    // a@x.se is deleted in Voyado, then changes: the update reports it unknown, and UPSERT
    // creates it again with every value.
    let id = emu.find("email", "a@x.se")[0].id.clone();
    emu.delete_contacts(Deletion::Ids(vec![id]));
    s.land(&batch(&[
        row("old@x.se", 1),
        row("a@x.se", 5),
        row("bad@x.se", 3),
    ]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [1, 0, 0, 0, 0, 0]);
    assert_eq!(
        by_email(&emu)["a@x.se"],
        json!({"email": "a@x.se", "firstName": "Ada", "gender": "Female", "i": 5})
    );

    // UPDATE mode never creates: unknown contacts end not_found and are remembered.
    let emu2 = Emulator::start(bulk_emulator(Faults::default()))
        .await
        .unwrap();
    emu2.insert_contact(json!({"email": "u0@x.se"}).as_object().unwrap().clone())
        .unwrap();
    let s2 = bulk_sync(&emu2, "update", "", "");
    s2.land(&batch(&rows(2)));
    let out = run(&s2, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [0, 1, 0, 1, 0, 0]);
    assert_eq!(emu2.contacts().len(), 1);
    assert_eq!(by_email(&emu2)["u0@x.se"], full("u0@x.se", 0));
    assert_eq!(emu2.requests().endpoint(Endpoint::BulkCreate), 0);
    let before = emu2.requests().total();
    let out = run(&s2, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 0, 0, 0]);
    assert_eq!(emu2.requests().total(), before);
    assert_no_violations(&emu2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_or_never_finishes_leaves_its_rows_for_the_next_run() {
    for faults in [
        Faults {
            bulk_stall_rate: 1.0,
            ..Faults::default()
        },
        Faults {
            bulk_fail_rate: 1.0,
            ..Faults::default()
        },
    ] {
        let stuck = Emulator::start(bulk_emulator(faults.clone()))
            .await
            .unwrap();
        let s = bulk_sync(&stuck, "upsert", "bulk_timeout_secs = 1", "");
        s.land(&batch(&rows(7)));
        let out = run(&s, &[]).await;
        assert_eq!(out.code, 4, "{faults:?}: {}", out.stderr);
        let r = parse(&out);
        assert_eq!(outcomes(&r), [0, 0, 0, 0, 0, 7], "{faults:?}");
        let reason = r["samples"]["failed"][0]["reason"].as_str().unwrap();
        if faults.bulk_stall_rate > 0.0 {
            assert!(reason.contains("did not finish within 1 s"), "{reason}");
        } else {
            assert!(reason.to_lowercase().contains("fail"), "{reason}");
        }
        assert!(stuck.contacts().is_empty());

        // Nothing was confirmed: the next run (the tenant healthy again) sends every row.
        let healthy = Emulator::start(bulk_emulator(Faults::default()))
            .await
            .unwrap();
        point_at(&s, &healthy);
        let out = run(&s, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(outcomes(&parse(&out)), [7, 0, 0, 0, 0, 0]);
        assert_exact(&healthy, 7);
        assert_no_violations(&healthy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_server_errors_and_429_on_bulk_calls_create_no_duplicate() {
    // A cap below the client's pace: bulk calls and status polls share the single path's
    // rate limit and retries.
    let emu = Emulator::start(bulk_emulator(Faults {
        seed: 11,
        lost_answer_rate: 0.5,
        error_rate: 0.2,
        rate_limit: Some(RateLimit {
            requests: 5,
            window: Duration::from_millis(500),
            retry_after_secs: None,
        }),
        ..Faults::default()
    }))
    .await
    .unwrap();
    let s = bulk_sync(
        &emu,
        "upsert",
        "bulk_batch_size = 4",
        "[limits]\nrequest_timeout_secs = 5\nretry_initial_backoff_ms = 20\n",
    );
    s.land(&batch(&rows(20)));
    let mut last = None;
    for _ in 0..4 {
        let out = run(&s, &[]).await;
        last = Some(out.code);
        if out.code == 0 {
            break;
        }
        assert_eq!(out.code, 4, "{}", out.stderr);
    }
    assert_eq!(last, Some(0));
    let injected = emu.injected_faults();
    assert!(injected.lost_answers > 0, "the fault was exercised");
    assert!(injected.rate_limited > 0, "the cap was exercised");
    assert!(
        emu.requests().count(Endpoint::BulkCreate, 429)
            + emu.requests().count(Endpoint::BulkStatus, 429)
            > 0
    );
    assert_exact(&emu, 20);
    assert_no_violations(&emu);
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, 0, 0, 0, 0, 0]);
    assert_eq!(emu.requests().total(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_polling_resumes_without_duplicates() {
    let mut c = bulk_emulator(Faults::default());
    c.bulk_delay = Duration::from_secs(2);
    let emu = Emulator::start(c).await.unwrap();
    let s = bulk_sync(&emu, "upsert", "bulk_batch_size = 10", "");
    s.land(&batch(&rows(30)));
    let mut child = crate::common::spawn_run(&s.config(), &[("VOYADO_SYNC_TEST_KEY", KEY)]);
    let mut waited = 0;
    while emu.requests().endpoint(Endpoint::BulkStatus) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 1500, "no status poll within 30 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended too soon"
        );
    }
    child.kill().unwrap(); // SIGKILL while batches are accepted but unfinished
    child.wait().unwrap();
    assert!(
        emu.contacts().len() < 30,
        "killed before the batches finished"
    );

    // The killed run's batches still finish in Voyado; the rerun sends the unconfirmed rows
    // again, finds them existing and updates them, never creating one twice.
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sent = outcomes(&parse(&out));
    assert_eq!(sent[0] + sent[1], 30, "{sent:?}");
    assert_exact(&emu, 30);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_the_assumed_status_path_stops_the_bulk_calls() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Accepts bulk calls, but the assumed v3 status path does not exist on it.
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let app = axum::Router::new()
        .route(
            "/api/v3/contacts/id",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    r#"{"errorCode":"ContactNotFound"}"#,
                )
            }),
        )
        .route(
            "/api/v3/contacts/bulk",
            axum::routing::post(move || {
                let n = c2.fetch_add(1, Ordering::SeqCst);
                async move { (axum::http::StatusCode::ACCEPTED, format!("\"b-{n}\"")) }
            }),
        )
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "Not Found") });
    let addr = crate::common::serve(app).await;
    let s = Sync::new();
    s.write_config(
        "SELECT * FROM t",
        "id",
        "email",
        "upsert",
        &format!(
            "api = \"bulk\"\nbulk_batch_size = 2\nbulk_poll_interval_ms = 20\n{}",
            crate::diff::MAPPING
        ),
    );
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("http://127.0.0.1:9", &format!("http://{addr}")),
    )
    .unwrap();
    s.land(&batch(&rows(20)));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let r = parse(&out);
    assert_eq!(outcomes(&r), [0, 0, 0, 0, 0, 20]);
    let reason = r["samples"]["failed"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not serve the bulk status path"),
        "{reason}"
    );
    // Only the batches already in flight were sent: 4 of 10.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn check_refuses_bulk_with_a_key_bulk_items_cannot_carry() {
    let s = Sync::new();
    s.write_config(
        "SELECT * FROM t",
        "id",
        "contactId",
        "update",
        "api = \"bulk\"\nbulk_batch_size = 5000\n\n[fields]\ns = \"firstName\"\n",
    );
    s.land(&batch(&rows(1)));
    let out = cli(
        &["check", "-c", s.config().to_str().unwrap()],
        &[("VOYADO_SYNC_TEST_KEY", KEY)],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("[sync] api: \"bulk\" cannot be used with [identifier] key contactId"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("[sync] bulk_batch_size: 5000 is not between 1 and 4000"),
        "{}",
        out.stderr
    );
}
