//! `/metrics` (Prometheus text format 0.0.4) and `/healthz`, served from the daemon's
//! in-memory [`Status`]: a scrape makes no store request.
//!
//! The server is deliberately small: HTTP/1.1 GET only, one request per connection, a
//! request head of at most 8 KiB read within 5 s, at most 64 connections at once.
//! It binds where the configuration says (127.0.0.1 by default): the metrics name
//! databases and repositories, so exposing them wider is the operator's choice.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::status::Status;

/// Label value escaping of the text format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics of `st` at `now_ms`.
pub fn render(st: &Status, now_ms: i64) -> String {
    let mut o = String::new();
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(&mut o, "sqlvault_build_info", "gauge", "sqlvault's version.");
    let _ = writeln!(o, "sqlvault_build_info{{version=\"{}\"}} 1", esc(&st.version));
    head(&mut o, "sqlvault_up", "gauge", "1 while the daemon runs.");
    let _ = writeln!(o, "sqlvault_up {}", u8::from(st.running));
    head(
        &mut o,
        "sqlvault_config_reloads_total",
        "counter",
        "Configuration reloads that succeeded.",
    );
    let _ = writeln!(o, "sqlvault_config_reloads_total {}", st.reloads);
    head(
        &mut o,
        "sqlvault_config_reload_failed",
        "gauge",
        "1 when the last reload failed (the previous configuration stays).",
    );
    let _ = writeln!(
        o,
        "sqlvault_config_reload_failed {}",
        u8::from(st.reload_error.is_some())
    );
    head(&mut o, "sqlvault_healthy", "gauge", "1 when /healthz answers 200.");
    let _ = writeln!(o, "sqlvault_healthy {}", u8::from(st.unhealthy(now_ms).is_empty()));

    head(
        &mut o,
        "sqlvault_database_error",
        "gauge",
        "1 when the database cannot be followed.",
    );
    head(
        &mut o,
        "sqlvault_transactions_total",
        "counter",
        "Transactions followed.",
    );
    head(
        &mut o,
        "sqlvault_continuity_breaks_total",
        "counter",
        "New chains started, by reason.",
    );
    head(
        &mut o,
        "sqlvault_last_success_timestamp_seconds",
        "gauge",
        "Last success by database, destination and kind.",
    );
    head(
        &mut o,
        "sqlvault_failures_total",
        "counter",
        "Failures by database, destination and kind.",
    );
    head(
        &mut o,
        "sqlvault_replication_lag_seconds",
        "gauge",
        "How long the oldest committed state not yet shipped has waited.",
    );
    head(
        &mut o,
        "sqlvault_newest_state_timestamp_seconds",
        "gauge",
        "When the newest state the destination holds was observed.",
    );
    head(
        &mut o,
        "sqlvault_pitr_window_seconds",
        "gauge",
        "How far back every shipped state is restorable.",
    );
    head(&mut o, "sqlvault_segments_total", "counter", "Segments shipped.");
    head(
        &mut o,
        "sqlvault_uploaded_bytes_total",
        "counter",
        "Bytes uploaded by segments.",
    );
    head(
        &mut o,
        "sqlvault_requests_total",
        "counter",
        "Store requests by operation.",
    );
    head(
        &mut o,
        "sqlvault_job_failing",
        "gauge",
        "1 when the last run of this kind failed.",
    );
    head(
        &mut o,
        "sqlvault_drill_seconds",
        "gauge",
        "The last drill's restore and check time (measured RTO).",
    );
    head(
        &mut o,
        "sqlvault_drill_bytes",
        "gauge",
        "Bytes the last drill restored.",
    );
    for (path, d) in &st.databases {
        let db = format!("database=\"{}\",path=\"{}\"", esc(&d.name), esc(path));
        let _ = writeln!(o, "sqlvault_database_error{{{db}}} {}", u8::from(d.error.is_some()));
        let _ = writeln!(o, "sqlvault_transactions_total{{{db}}} {}", d.commits);
        for (r, n) in &d.breaks {
            let _ = writeln!(o, "sqlvault_continuity_breaks_total{{{db},reason=\"{}\"}} {n}", esc(r));
        }
        for (name, t) in &d.destinations {
            let l = format!("{db},destination=\"{}\"", esc(name));
            for (k, ms) in &t.last_success_ms {
                let _ = writeln!(
                    o,
                    "sqlvault_last_success_timestamp_seconds{{{l},kind=\"{}\"}} {:.3}",
                    esc(k),
                    *ms as f64 / 1000.0
                );
            }
            for (k, n) in &t.failures {
                let _ = writeln!(o, "sqlvault_failures_total{{{l},kind=\"{}\"}} {n}", esc(k));
            }
            let _ = writeln!(
                o,
                "sqlvault_replication_lag_seconds{{{l}}} {:.3}",
                t.lag_seconds(now_ms)
            );
            let _ = writeln!(
                o,
                "sqlvault_newest_state_timestamp_seconds{{{l}}} {:.3}",
                t.newest_state_ms as f64 / 1000.0
            );
            let window = if t.pitr_from_ms > 0 {
                (now_ms - t.pitr_from_ms).max(0) as f64 / 1000.0
            } else {
                0.0
            };
            let _ = writeln!(o, "sqlvault_pitr_window_seconds{{{l}}} {window:.3}");
            let _ = writeln!(o, "sqlvault_segments_total{{{l}}} {}", t.segments);
            let _ = writeln!(o, "sqlvault_uploaded_bytes_total{{{l}}} {}", t.bytes);
            for (op, n) in &t.requests {
                let _ = writeln!(o, "sqlvault_requests_total{{{l},op=\"{}\"}} {n}", esc(op));
            }
            for k in ["snapshot", "verify", "drill", "prune", "open"] {
                let _ = writeln!(
                    o,
                    "sqlvault_job_failing{{{l},kind=\"{k}\"}} {}",
                    u8::from(t.failing.contains_key(k))
                );
            }
            if t.drill_bytes > 0 {
                let _ = writeln!(o, "sqlvault_drill_seconds{{{l}}} {:.3}", t.drill_seconds);
                let _ = writeln!(o, "sqlvault_drill_bytes{{{l}}} {}", t.drill_bytes);
            }
        }
    }
    o
}

/// Serves `/metrics` and `/healthz` on `listener` from `status` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, status: Arc<Mutex<Status>>, stop: sqlvault_engine::Cancel) {
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.is_cancelled() { return; }
                continue;
            }
        };
        let Ok((mut sock, _)) = accepted else {
            // Out of descriptors, most likely: no busy loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: too many at once
        };
        let status = status.clone();
        // The whole exchange within 10 s: a client that never reads its answer does
        // not keep a slot.
        tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
            let _permit = permit;
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            if !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let _ = sock
                    .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            let line =
                String::from_utf8_lossy(&head[..head.iter().position(|&b| b == b'\r').unwrap_or(0)]).into_owned();
            let mut parts = line.split(' ');
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            let now = crate::now_ms();
            let (code, ctype, body) = if method != "GET" && method != "HEAD" {
                ("405 Method Not Allowed", "text/plain", "GET only\n".to_string())
            } else {
                let st = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(&st, now)),
                    "/healthz" => {
                        let bad = st.unhealthy(now);
                        if bad.is_empty() {
                            ("200 OK", "text/plain", "ok\n".to_string())
                        } else {
                            ("503 Service Unavailable", "text/plain", bad.join("\n") + "\n")
                        }
                    }
                    _ => ("404 Not Found", "text/plain", "/metrics or /healthz\n".to_string()),
                }
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            if method != "HEAD" {
                let _ = sock.write_all(body.as_bytes()).await;
            }
            let _ = sock.shutdown().await;
        }));
    }
}
