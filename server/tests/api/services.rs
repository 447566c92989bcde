use baton_proto::link::AgentFrame;
use std::io::Read as _;
use std::time::Duration;

use crate::helpers::{FakeAgent, TestApp, service, spawn_app};

async fn get_services(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/services", app.address))
        .bearer_auth(&app.viewer);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_list_is_gzipped_for_clients_that_accept_it_and_says_the_same() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;

    let plain = get_services(&app, &[]).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(header(&plain, "content-encoding"), None);
    let vary = header(&plain, "vary").unwrap().to_ascii_lowercase();
    assert!(vary.contains("accept-encoding"), "Vary: {vary}");
    let plain_etag = header(&plain, "etag").unwrap().to_string();
    let plain = plain.bytes().await.unwrap();

    let gzipped = get_services(&app, &[("accept-encoding", "br;q=1, gzip;q=0.8")]).await;
    assert_eq!(gzipped.status(), 200);
    assert_eq!(header(&gzipped, "content-encoding"), Some("gzip"));
    // Other bytes, another tag; either one revalidates.
    let gzip_etag = header(&gzipped, "etag").unwrap().to_string();
    assert_ne!(gzip_etag, plain_etag);
    for tag in [&plain_etag, &gzip_etag] {
        let again =
            get_services(&app, &[("accept-encoding", "gzip"), ("if-none-match", tag)]).await;
        assert_eq!(again.status(), 304, "{tag}");
        assert_eq!(header(&again, "etag"), Some(gzip_etag.as_str()));
    }
    let compressed = gzipped.bytes().await.unwrap();
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut unpacked)
        .expect("a valid gzip stream");
    assert_eq!(unpacked, plain);

    let list: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(list["services"][0]["name"], "web");
    assert_eq!(list["services"][0]["hosts"][0]["current"]["generation"], 1);

    let refused = get_services(&app, &[("accept-encoding", "gzip;q=0")]).await;
    assert_eq!(header(&refused, "content-encoding"), None);
    assert_eq!(refused.bytes().await.unwrap(), plain);
}

#[tokio::test]
async fn an_unchanged_list_is_a_304_and_a_change_gets_a_new_etag() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;

    let first = get_services(&app, &[]).await;
    let etag = header(&first, "etag").expect("an ETag").to_string();
    let unchanged = get_services(&app, &[("if-none-match", &etag)]).await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(header(&unchanged, "etag"), Some(etag.as_str()));
    assert!(unchanged.bytes().await.unwrap().is_empty());

    // The same status again is no change; a new generation is.
    agent
        .send(&AgentFrame::Status {
            services: vec![service("web", 1)],
        })
        .await;
    agent
        .send(&AgentFrame::Status {
            services: vec![service("web", 2)],
        })
        .await;
    for _ in 0..100 {
        let answer = get_services(&app, &[("if-none-match", &etag)]).await;
        if answer.status() == 200 {
            let new_etag = header(&answer, "etag").unwrap().to_string();
            assert_ne!(new_etag, etag);
            let list: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(list["services"][0]["hosts"][0]["current"]["generation"], 2);
            let again = get_services(&app, &[("if-none-match", &new_etag)]).await;
            assert_eq!(again.status(), 304);
            return;
        }
        assert_eq!(answer.status(), 304);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the list kept its ETag after the service changed");
}
