use baton_proto::RestartOutcome;
use baton_server::store::{self, Created, NewRestart};

use crate::browser::Browser;
use crate::helpers::spawn_app;

/// Rows a history page lists, by id.
fn restart_ids(html: &str) -> Vec<u64> {
    html.match_indices("<td data-label=\"Restart\"><a href=\"/restarts/")
        .map(|(at, marker)| {
            let rest = &html[at + marker.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn history_filters_by_service_host_and_outcome_and_pages_by_id() {
    let app = spawn_app().await;
    let db = app.db().await;
    let hosts_a = vec!["alpha".to_string()];
    let hosts_b = vec!["beta".to_string()];
    for n in 0..130u32 {
        let (service, hosts) = if n % 2 == 0 {
            ("web", &hosts_a)
        } else {
            ("api", &hosts_b)
        };
        let Created::New(created) = store::create_restart(
            &db,
            &NewRestart {
                service,
                reason: None,
                requested_by: "ci",
                idempotency_key: None,
                max_parallel: 1,
                rollout: Default::default(),
                hosts,
            },
        )
        .await
        .unwrap() else {
            panic!("not created")
        };
        let outcome = if n % 10 == 0 {
            RestartOutcome::RolledBack
        } else {
            RestartOutcome::Succeeded
        };
        store::finish_restart(&db, created.id(), outcome, None)
            .await
            .unwrap();
    }
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;

    let first = browser.page("/restarts").await;
    let ids = restart_ids(&first);
    assert_eq!(ids.len(), 50);
    assert_eq!(ids[0], 130);
    assert!(first.contains("href=\"/restarts?before=81\""), "{first}");
    let second = restart_ids(&browser.page("/restarts?before=81").await);
    assert_eq!(second[0], 80);
    assert_eq!(second.len(), 50);

    let web = browser.page("/restarts?service=web").await;
    let web_ids = restart_ids(&web);
    assert_eq!(web_ids.len(), 50);
    assert!(
        web_ids.iter().all(|id| id % 2 == 1),
        "web restarts have odd ids"
    );
    let older = web
        .split("href=\"")
        .find(|s| s.starts_with("/restarts?service=web&#38;before="))
        .unwrap_or_else(|| panic!("an older page link keeping the filter: {web}"));
    assert!(older.contains("rel=\"next\"") || older.contains("Older"));

    let beta = restart_ids(&browser.page("/restarts?host=beta").await);
    assert!(beta.iter().all(|id| id % 2 == 0));
    let rolled_back = browser.page("/restarts?outcome=rolled_back").await;
    let rolled_back_ids = restart_ids(&rolled_back);
    assert_eq!(rolled_back_ids.len(), 13);
    assert!(rolled_back.contains("rolled back"));
    assert!(!rolled_back.contains("Older"));
    let combined = restart_ids(
        &browser
            .page("/restarts?service=api&outcome=rolled_back")
            .await,
    );
    assert!(combined.is_empty());

    let invalid = browser.get("/restarts?outcome=sideways").await;
    assert_eq!(invalid.status(), 422);
    assert!(invalid.text().await.unwrap().contains("unknown outcome"));
}

#[tokio::test]
async fn a_failed_restart_lists_the_operators_reason_and_why_it_failed() {
    let app = spawn_app().await;
    let db = app.db().await;
    let hosts = vec!["alpha".to_string()];
    let Created::New(created) = store::create_restart(
        &db,
        &NewRestart {
            service: "web",
            reason: Some("deploy 1.4.2"),
            requested_by: "ci",
            idempotency_key: None,
            max_parallel: 1,
            rollout: Default::default(),
            hosts: &hosts,
        },
    )
    .await
    .unwrap() else {
        panic!("not created")
    };
    store::finish_restart(
        &db,
        created.id(),
        RestartOutcome::Failed,
        Some("host alpha: offline"),
    )
    .await
    .unwrap();
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    for path in ["/restarts", "/services/web"] {
        let page = browser.page(path).await;
        let Some(cell) = page
            .split("<td data-label=\"Reason\" class=\"reason\">")
            .nth(1)
        else {
            // The service page lists restarts only of a service a host runs.
            assert_eq!(path, "/services/web");
            continue;
        };
        let cell = &cell[..cell.find("</td>").unwrap()];
        assert!(cell.contains("deploy 1.4.2"), "{path}: {cell}");
        assert!(cell.contains("host alpha: offline"), "{path}: {cell}");
    }
}
