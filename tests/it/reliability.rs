//! Faults, crashes, concurrent runs, hostile answers and secrets: each injected for real,
//! each ending with exactly the expected contacts, no duplicate and a readable state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use voyado_emulator::{Emulator, EmulatorConfig, Endpoint, Faults, RateLimit};

use crate::common::{Sync, cli, cli_async, json as parse, serve};
use crate::diff::{MAPPING, Row, batch};
use crate::sync::{
    KEY, assert_no_violations, by_email, emulator_config, outcomes, row, run, sync_for,
};

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| row(&format!("u{i}@x.se"), i as i64))
        .collect()
}

/// Every u{i} contact holds i, once.
fn assert_exact(emu: &Emulator, n: usize) {
    let mut contacts = by_email(emu);
    contacts.remove(voyado_sync::sink::voyado::calls::PROBE_EMAIL);
    assert_eq!(contacts.len(), n, "one contact per row, no duplicates");
    let mut per_email: BTreeMap<String, usize> = BTreeMap::new();
    for c in emu.contacts() {
        *per_email
            .entry(c.str("email").unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert!(
        per_email.values().all(|n| *n == 1),
        "duplicates: {per_email:?}"
    );
    for i in 0..n {
        assert_eq!(contacts[&format!("u{i}@x.se")]["i"], i as i64, "u{i}");
        assert_eq!(contacts[&format!("u{i}@x.se")]["firstName"], "Ada", "u{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_api_converges_in_two_runs_without_duplicates() {
    let mut c = emulator_config();
    c.faults = Faults {
        seed: 42,
        error_rate: 0.15,
        lost_answer_rate: 0.05,
        race_create_rate: 0.1,
        rate_limit: Some(RateLimit {
            requests: 40,
            window: Duration::from_secs(1),
            retry_after_secs: None,
        }),
        ..Faults::default()
    };
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nrequests_per_second = 60\nconcurrency = 16\nretry_initial_backoff_ms = 10\nrequest_timeout_secs = 5\n",
    );
    s.land(&batch(&rows(120)));
    let first = run(&s, &[]).await;
    assert!(matches!(first.code, 0 | 4), "{}", first.stderr);
    if first.code == 4 {
        assert!(outcomes(&parse(&first))[5] > 0, "exit 4 means failed rows");
        let second = run(&s, &[]).await;
        assert_eq!(second.code, 0, "{}", second.stderr);
    }
    let f = emu.injected_faults();
    assert!(
        f.lost_answers > 0 && f.server_errors > 0 && f.rate_limited > 0 && f.race_creates > 0,
        "{f:?}"
    );
    assert_exact(&emu, 120);
    let before = emu.requests().total();
    let third = run(&s, &[]).await;
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(
        emu.requests().total(),
        before,
        "a converged sync sends nothing"
    );
    assert_no_violations(&emu);
}

/// Rows named in the manifest's deltas: what the state confirmed so far.
fn confirmed_rows(state_dir: &std::path::Path) -> usize {
    let Ok(text) = std::fs::read_to_string(state_dir.join("manifest.json")) else {
        return 0;
    };
    let m: Value = serde_json::from_str(&text).unwrap();
    m["deltas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let f = std::fs::File::open(state_dir.join(d.as_str().unwrap())).unwrap();
            let r = datafusion::parquet::file::reader::SerializedFileReader::new(f).unwrap();
            use datafusion::parquet::file::reader::FileReader;
            r.metadata().file_metadata().num_rows() as usize
        })
        .sum()
}

fn spawn_run(s: &Sync) -> std::process::Child {
    crate::common::spawn_run(&s.config(), &[("VOYADO_SYNC_TEST_KEY", KEY)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_flight_resumes_from_its_last_checkpoint() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nrequests_per_second = 400\nconcurrency = 32\n\n[sync]\ncheckpoint_rows = 100\ncheckpoint_secs = 1\n",
    );
    // `[sync]` appears twice now: fold the checkpoint keys into the first one.
    let text = std::fs::read_to_string(s.config()).unwrap();
    let text = text
        .replacen(
            "[sync]\ncheckpoint_rows = 100\ncheckpoint_secs = 1\n",
            "",
            1,
        )
        .replace(
            "state = \"state\"",
            "state = \"state\"\ncheckpoint_rows = 100\ncheckpoint_secs = 1",
        );
    std::fs::write(s.config(), text).unwrap();
    let n = 2000;
    s.land(&batch(&rows(n)));
    let mut child = spawn_run(&s);
    let state = s.state_dir();
    let mut waited = 0;
    while confirmed_rows(&state) < 500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        assert!(waited < 1200, "no checkpoint within a minute");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let confirmed = confirmed_rows(&state);
    let writes_before =
        emu.requests().endpoint(Endpoint::Create) + emu.requests().endpoint(Endpoint::Update);
    assert!(confirmed < n, "killed before the end");

    // A plain rerun takes over the dead run's lock and sends only what was unconfirmed.
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    let sent = outcomes(&r);
    assert!(
        (sent[0] + sent[1]) as usize <= n - confirmed,
        "resent confirmed rows: {sent:?} with {confirmed} confirmed"
    );
    assert_eq!(
        r["counts"]["unchanged"].as_u64().unwrap() as usize,
        confirmed
    );
    let writes =
        emu.requests().endpoint(Endpoint::Create) + emu.requests().endpoint(Endpoint::Update);
    assert!(writes - writes_before <= (n - confirmed) as u64);
    assert_exact(&emu, n);
    let before = emu.requests().total();
    assert_eq!(run(&s, &[]).await.code, 0);
    assert_eq!(emu.requests().total(), before);
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_one_sync_refuses_while_the_first_is_alive() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nrequests_per_second = 20\n",
    );
    s.land(&batch(&rows(200)));
    let mut first = spawn_run(&s);
    let lock = s.state_dir().join("lock.json");
    for _ in 0..600 {
        if lock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lock.exists());
    let second = run(&s, &[]).await;
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert!(
        second.stderr.contains("locked by another run"),
        "{}",
        second.stderr
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_keeps_the_state_whole_and_usable() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    s.land(&batch(&rows(30)));
    // A path the commit must write under is not a folder: every write there fails,
    // even for root.
    std::fs::create_dir_all(s.state_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [s.path("state"), s.state_dir()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(s.state_dir().join("snapshots"), b"in the way").unwrap();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let err = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap();
    assert!(err.contains("snapshots/"), "{err}");
    assert_exact(&emu, 30);
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(s.state_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    for delta in m["deltas"].as_array().unwrap() {
        crate::state::assert_quick_to_read(&s.state_dir().join(delta.as_str().unwrap()));
    }
    // The confirmed outcomes are in the state's deltas: nothing is sent again.
    let plan = cli(&["plan", "--json", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(crate::common::counts(&parse(&plan)), [0, 0, 30, 0, 0]);
    std::fs::remove_file(s.state_dir().join("snapshots")).unwrap();
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(emu.requests().total(), before);
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(s.state_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["snapshot_rows"], 30);
    assert_eq!(m["deltas"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_times_out_with_a_clear_error() {
    let mut c = emulator_config();
    c.faults.latency = Duration::from_millis(2500);
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nrequest_timeout_secs = 1\nmax_retries = 1\nretry_initial_backoff_ms = 10\n",
    );
    s.land(&batch(&rows(3)));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    assert!(
        !s.state_dir().join("manifest.json").exists(),
        "nothing recorded"
    );
}

/// A server answering what a broken gateway or tenant might: HTML, empty bodies,
/// truncated JSON, a create without an id.
async fn garbage_server() -> (SocketAddr, Arc<AtomicUsize>) {
    use axum::extract::RawQuery;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let creates = Arc::new(AtomicUsize::new(0));
    let c2 = creates.clone();
    let app = axum::Router::new()
        .route(
            "/api/v3/contacts/id",
            get(|RawQuery(q): RawQuery| async move {
                let q = q.unwrap_or_default();
                let v = |s: &'static str| q.contains(s);
                if v("html%40") {
                    (
                        StatusCode::OK,
                        "<html><body>Service Unavailable</body></html>",
                    )
                        .into_response()
                } else if v("empty%40") {
                    (StatusCode::OK, "").into_response()
                } else if v("trunc%40") {
                    (StatusCode::OK, "\"2e40b7").into_response()
                } else if v("error%40") {
                    (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>").into_response()
                } else {
                    (StatusCode::NOT_FOUND, "{\"errorCode\":\"ContactNotFound\"}").into_response()
                }
            }),
        )
        .route(
            "/api/v3/contacts",
            post(move || {
                let c = c2.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::CREATED, "{\"firstName\": \"no id here\"}")
                }
            }),
        );
    let addr = serve(app).await;
    (addr, creates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_become_clear_row_failures_never_panics() {
    let (addr, creates) = garbage_server().await;
    let s = Sync::new();
    s.write_config(
        "SELECT * FROM t",
        "id",
        "email",
        "upsert",
        &format!("{MAPPING}\n[limits]\nmax_retries = 2\nretry_initial_backoff_ms = 5\n"),
    );
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("http://127.0.0.1:9", &format!("http://{addr}")),
    )
    .unwrap();
    s.land(&batch(&[
        row("html@x.se", 1),
        row("empty@x.se", 1),
        row("trunc@x.se", 1),
        row("error@x.se", 1),
        row("noid@x.se", 1),
    ]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
    let r = parse(&out);
    assert_eq!(outcomes(&r), [0, 0, 0, 0, 0, 5]);
    let reasons: BTreeMap<String, String> = r["samples"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["identifier"].as_str().unwrap().into(),
                s["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        reasons["html@x.se"].contains("without a contactId"),
        "{reasons:?}"
    );
    assert!(
        reasons["empty@x.se"].contains("without a contactId"),
        "{reasons:?}"
    );
    assert!(
        reasons["trunc@x.se"].contains("without a contactId"),
        "{reasons:?}"
    );
    assert!(reasons["error@x.se"].contains("HTTP 500"), "{reasons:?}");
    assert!(
        reasons["noid@x.se"].contains("without an id"),
        "{reasons:?}"
    );
    assert_eq!(
        creates.load(Ordering::SeqCst),
        1,
        "a create answered without id is never repeated"
    );
    // nothing was confirmed: a plan still sees every row as new
    let plan = cli(&["plan", "--json", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(crate::common::counts(&parse(&plan))[0], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_to_another_host() {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    // The other host: 127.0.0.2 (loopback), counting every connection it receives.
    let other = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    other.set_nonblocking(true).unwrap();
    let location = format!("http://{other_addr}/api/v3/contacts/id");
    let app = axum::Router::new().fallback(move || {
        let l = location.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, l)]).into_response() }
    });
    let addr = serve(app).await;
    let s = Sync::new();
    s.write_config("SELECT * FROM t", "id", "email", "upsert", MAPPING);
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("http://127.0.0.1:9", &format!("http://{addr}")),
    )
    .unwrap();
    s.land(&batch(&[row("a@x.se", 1)]));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("307 redirect to"), "{}", out.stderr);
    assert!(other.accept().is_err(), "nothing may reach the other host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_cannot_change_the_endpoint_called() {
    let mut c = emulator_config();
    c.contact_types[0].key = "externalId".into();
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(&emu, "externalId", "upsert", "");
    let ids = [
        "a/b",
        "c?d=1",
        "e#f",
        "g&email=h@x.se",
        "i+j",
        "k%20l",
        "m n",
        "ö/../../x",
        "\u{202E}rtl👍é",
    ];
    s.land(&batch(&ids.map(|i| row(i, 1))));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [ids.len() as u64, 0, 0, 0, 0, 0]);
    let mut held: Vec<String> = emu
        .contacts()
        .iter()
        .map(|c| c.str("externalId").unwrap().to_string())
        .collect();
    held.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.trim().to_string()).collect();
    want.sort();
    assert_eq!(held, want);
    assert_eq!(emu.requests().endpoint(Endpoint::Unknown), 0);
    // found again by lookup, not created twice
    assert_eq!(
        cli(&["reset", "-c", s.config().to_str().unwrap()], &[]).code,
        0
    );
    let out = run(&s, &[]).await;
    assert_eq!(outcomes(&parse(&out)), [0, ids.len() as u64, 0, 0, 0, 0]);
    assert_eq!(emu.contacts().len(), ids.len());
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_leaves_the_process() {
    let secret = "SeCrEt-0123456789-abcdef";
    let mut c = EmulatorConfig::new(secret);
    c.custom_attributes = ["b", "d", "ts", "i", "f"].map(String::from).to_vec();
    let emu = Emulator::start(c).await.unwrap();
    let s = sync_for(
        &emu,
        "email",
        "upsert",
        "[limits]\nretry_initial_backoff_ms = 5\n",
    );
    let mut data = rows(5);
    data.push(row("broken", 1));
    s.land(&batch(&data));
    let cfg = s.config().to_str().unwrap().to_string();
    let env = [("VOYADO_SYNC_TEST_KEY", secret)];
    let mut outputs = Vec::new();
    for args in [
        vec!["-vv", "check", "-c", &cfg],
        vec!["-vv", "plan", "--json", "-c", &cfg],
        vec!["-vv", "run", "--json", "-c", &cfg],
        vec!["-vv", "run", "-c", &cfg],
        vec!["-vv", "history", "-c", &cfg],
        vec!["-vv", "baseline", "-c", &cfg],
        vec!["-vv", "reset", "-c", &cfg],
    ] {
        outputs.push(cli_async(&args, &env).await);
    }
    // failing runs: a wrong URL, and a key Voyado refuses (shown the secret in the env)
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace(&emu.base_url(), "http://127.0.0.1:1"),
    )
    .unwrap();
    outputs.push(cli_async(&["-vv", "run", "-c", &cfg], &env).await);
    assert!(
        outputs[2].code == 3,
        "the sync itself ran: {}",
        outputs[2].stderr
    );
    for o in &outputs {
        assert!(
            !o.stdout.contains(secret) && !o.stderr.contains(secret),
            "leaked: {}{}",
            o.stdout,
            o.stderr
        );
    }
    fn walk(dir: &std::path::Path, secret: &str) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                n += walk(&p, secret);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the key",
                    p.display()
                );
                n += 1;
            }
        }
        n
    }
    assert!(
        walk(&s.path("state"), secret) >= 3,
        "reports and side files were checked"
    );
}

#[test]
fn a_state_folder_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sync::new();
    s.write_config("SELECT * FROM t", "id", "email", "upsert", MAPPING);
    s.land(&batch(&rows(2)));
    assert_eq!(
        cli(&["baseline", "-c", s.config().to_str().unwrap()], &[]).code,
        0
    );
    std::fs::set_permissions(s.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cli(&["plan", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("chmod 700"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_fatal_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let server = "import http.server, ssl, sys\n\
        srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n\
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
        print(srv.server_address[1], flush=True)\n\
        srv.serve_forever()\n";
    let mut py = Command::new("python3")
        .args(["-c", server])
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(py.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let s = Sync::new();
    s.write_config("SELECT * FROM t", "id", "email", "upsert", MAPPING);
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("http://127.0.0.1:9", &format!("https://localhost:{port}")),
    )
    .unwrap();
    s.land(&batch(&[row("a@x.se", 1)]));
    let out = run(&s, &[]).await;
    py.kill().ok();
    py.wait().ok();
    assert_eq!(out.code, 4, "{}", out.stderr);
    let err = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap();
    assert!(err.contains("TLS certificate rejected"), "{err}");
    assert!(!s.state_dir().join("manifest.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_refusing_the_state_stops_before_sending() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    // An S3 endpoint that refuses every request, as an expired credential would.
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h2.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::FORBIDDEN,
                "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
            )
                .into_response()
        }
    });
    let addr = serve(app).await;
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("state = \"state\"", "state = \"s3://bucket/syncs\""),
    )
    .unwrap();
    s.land(&batch(&rows(3)));
    let cfg = s.config().to_str().unwrap().to_string();
    let endpoint = format!("http://{addr}");
    let out = cli_async(
        &["run", "-c", &cfg],
        &[
            ("VOYADO_SYNC_TEST_KEY", KEY),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", &endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let err = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap();
    assert!(
        err.starts_with("error: state: ") && err.contains("403"),
        "{err}"
    );
    assert!(!err.contains("test-secret"));
    assert!(
        hits.load(Ordering::SeqCst) > 0,
        "the object store was really called"
    );
    assert_eq!(emu.requests().total(), 0, "nothing sent");
}
